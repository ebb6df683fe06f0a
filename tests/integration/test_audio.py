"""Speech through the real server and the openai SDK: Piper TTS → faster-whisper ASR.

One server runs the issue's config (piper-joe as tts-1, whisper tiny.en as whisper-1).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.audio_helpers import (
    SENTENCE,
    audio_config,
    decode_seconds,
    parse_srt,
    parse_vtt,
    tone_wav,
    wer,
)
from tests.helpers import Server, served

LONG_TEXT = (
    "Good morning everyone. Today we talk about the garden. The roses are red and the grass is green. "
    "We planted three new trees last spring. They grow a little every week. Thank you for listening."
)
BODY_LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("audio")
    with served(audio_config(max_body_bytes=BODY_LIMIT), tmp, "audio", 2) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def spoken_wav(client: openai.OpenAI) -> bytes:
    return client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format="wav").content


def test_round_trip_wer(client: openai.OpenAI, spoken_wav: bytes) -> None:
    assert spoken_wav[:4] == b"RIFF" and spoken_wav[8:12] == b"WAVE"
    text = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", spoken_wav))
    assert wer(SENTENCE, text.text) <= 0.2, text.text


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
def test_every_speech_format_decodes_and_transcribes(client: openai.OpenAI, fmt: str) -> None:
    # one file (streaming is the default for mp3/opus/aac; streamed audio is decoded in the contract suite):
    # a streamed AAC's frame alignment follows the chunk timing, enough to move whisper-tiny's WER by a word
    audio = client.audio.speech.create(
        model="tts-1", voice="echo", input=SENTENCE, response_format=fmt, extra_body={"stream": False}
    ).content
    assert 2.0 < decode_seconds(audio) < 10.0
    text = client.audio.transcriptions.create(model="whisper-1", file=(f"speech.{fmt}", audio))
    assert wer(SENTENCE, text.text) <= 0.2, (fmt, text.text)


def test_pcm_is_raw_s16le_24k(client: openai.OpenAI, server: Server, spoken_wav: bytes) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/audio/speech",
        json={"model": "tts-1", "voice": "alloy", "input": SENTENCE, "response_format": "pcm"},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("audio/pcm")
    assert r.headers["x-audio-sample-rate"] == "24000"
    samples = np.frombuffer(r.content, dtype="<i2")
    wav_seconds = (len(spoken_wav) - 44) / 2 / 22050
    assert abs(samples.size / 24000 - wav_seconds) < 1.0  # same sentence, ±synthesis noise
    assert np.abs(samples).max() > 1000


def test_speed_changes_duration(client: openai.OpenAI) -> None:
    slow = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format="flac", speed=0.5)
    fast = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE, response_format="flac", speed=2.0)
    assert decode_seconds(slow.content) > 2.5 * decode_seconds(fast.content)


def test_transcript_formats(client: openai.OpenAI, spoken_wav: bytes) -> None:
    f = ("speech.wav", spoken_wav)
    text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert isinstance(text, str) and wer(SENTENCE, text) <= 0.2
    srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    cues = parse_srt(srt)
    assert cues and wer(SENTENCE, " ".join(c[2] for c in cues)) <= 0.2
    vtt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    vcues = parse_vtt(vtt)
    assert [c[:2] for c in vcues] == [c[:2] for c in cues]
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=f, response_format="verbose_json", timestamp_granularities=["segment", "word"],
        language="en", temperature=0.0, prompt="A morning announcement.",
    )
    assert verbose.language == "en" and 2.0 < verbose.duration < 10.0
    assert verbose.segments and all(0 <= s.start <= s.end <= verbose.duration + 0.5 for s in verbose.segments)
    assert verbose.words and len(verbose.words) >= 8
    assert all(w.start <= w.end for w in verbose.words)
    starts = [w.start for w in verbose.words]
    assert starts == sorted(starts)


def test_streamed_transcription(client: openai.OpenAI, spoken_wav: bytes) -> None:
    events = list(client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", spoken_wav), stream=True))
    assert [e.type for e in events][-1] == "transcript.text.done"
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert deltas and "".join(deltas).strip() == events[-1].text
    assert wer(SENTENCE, events[-1].text) <= 0.2
    with pytest.raises(openai.BadRequestError):  # a bad file fails before the stream starts
        client.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"junk" * 100), stream=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_translation_endpoint(client: openai.OpenAI, spoken_wav: bytes) -> None:
    out = client.audio.translations.create(model="whisper-1", file=("speech.wav", spoken_wav))
    assert wer(SENTENCE, out.text) <= 0.2


def test_streaming_speech_starts_before_the_end(client: openai.OpenAI) -> None:
    arrivals: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=LONG_TEXT, response_format="mp3", extra_body={"stream": True}
    ) as resp:
        assert resp.headers["content-type"].startswith("audio/mpeg")
        for chunk in resp.iter_bytes():
            arrivals.append((time.perf_counter() - t0, len(chunk)))
    first, total = arrivals[0][0], arrivals[-1][0]
    print(f"\nstreaming TTS (mp3, {len(LONG_TEXT)} chars): first chunk {first * 1000:.0f} ms, last {total * 1000:.0f} ms, "
          f"{len(arrivals)} chunks")
    assert len(arrivals) >= 3
    assert first < 0.6 * total, arrivals
    audio = b"".join(b for b in _chunks_again(client))
    assert decode_seconds(audio) > 5.0


def _chunks_again(client: openai.OpenAI):  # noqa: ANN202
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=LONG_TEXT, response_format="opus", stream_format="audio"
    ) as resp:
        yield from resp.iter_bytes()


def test_sse_speech_events(server: Server) -> None:
    audio = b""
    types = []
    with httpx.stream(
        "POST", f"{server.base_url}/v1/audio/speech", timeout=60,
        json={"model": "tts-1", "voice": "alloy", "input": SENTENCE, "response_format": "wav", "stream_format": "sse"},
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                ev = json.loads(line[6:])
                types.append(ev["type"])
                if ev["type"] == "speech.audio.delta":
                    audio += base64.b64decode(ev["audio"])
    assert types[-1] == "speech.audio.done" and types.count("speech.audio.delta") >= 2
    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(audio))
    assert rate == 22050 and samples.size / rate > 2.0


def _status(exc: pytest.ExceptionInfo) -> tuple[int, dict]:
    return exc.value.status_code, exc.value.body


def test_bad_audio_is_400(client: openai.OpenAI) -> None:
    for name, data in [("x.wav", b"RIFF....WAVEnot really audio" * 20), ("x.mp3", bytes(range(256)) * 10), ("x.wav", b"")]:
        with pytest.raises(openai.BadRequestError) as exc:
            client.audio.transcriptions.create(model="whisper-1", file=(name, data))
        assert exc.value.body["param"] == "file", exc.value.body


def test_request_errors_are_400(client: openai.OpenAI) -> None:
    for speed in (0.1, 4.5):
        with pytest.raises(openai.BadRequestError) as exc:
            client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", speed=speed)
        assert exc.value.body["param"] == "speed"
    bad_speech = [
        ({"voice": "nobody"}, "voice"),
        ({"response_format": "ogg"}, "response_format"),
        ({"input": ""}, "input"),
    ]
    for override, param in bad_speech:
        kwargs = {"model": "tts-1", "voice": "alloy", "input": "Hi.", **override}
        with pytest.raises(openai.BadRequestError) as exc:
            client.audio.speech.create(**kwargs)
        assert exc.value.body["param"] == param, exc.value.body
    wav = tone_wav(0.5)
    with pytest.raises(openai.BadRequestError) as exc:
        client.audio.transcriptions.create(model="whisper-1", file=("t.wav", wav), language="fr")
    assert exc.value.body["param"] == "language"
    with pytest.raises(openai.BadRequestError) as exc:
        client.audio.transcriptions.create(model="whisper-1", file=("t.wav", wav), response_format="docx")
    with pytest.raises(openai.BadRequestError) as exc:  # a TTS model cannot transcribe
        client.audio.transcriptions.create(model="tts-1", file=("t.wav", wav))
    with pytest.raises(openai.BadRequestError):  # nor an ASR model speak
        client.audio.speech.create(model="whisper-1", voice="alloy", input="Hi.")


def test_form_errors(server: Server) -> None:
    url = f"{server.base_url}/v1/audio/transcriptions"
    r = httpx.post(url, data={"model": "whisper-1"}, files={"other": ("a.txt", b"x")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = httpx.post(url, json={"model": "whisper-1"})
    assert r.status_code == 400
    r = httpx.post(url, files={"file": ("t.wav", tone_wav(0.2))})
    assert r.status_code == 200, r.text  # no model: the only speech-to-text model
    big = tone_wav(BODY_LIMIT / 32000 + 1)  # 16 kHz 16-bit: just over the body limit
    r = httpx.post(url, data={"model": "whisper-1"}, files={"file": ("big.wav", big)})
    assert r.status_code == 413, r.text


def test_unknown_model_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="nope", file=("t.wav", tone_wav(0.2)))


# ---- the TTS worker dies mid-stream (last in this module: the launcher restarts it) ------

KILL_TEXT = " ".join([LONG_TEXT] * 15)[:4000]  # long enough to still be synthesizing at the kill


def _kill_tts_worker(server: Server) -> int:
    victim = next(w for w in server.workers() if w["model_name"] == "piper-joe")
    os.kill(victim["pid"], signal.SIGKILL)
    return victim["pid"]


def _wait_tts_back(server: Server, old_pid: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ws = [w for w in server.workers() if w["model_name"] == "piper-joe"]
        if ws and all(w["pid"] != old_pid and w["healthy"] for w in ws):
            return
        time.sleep(0.2)
    raise AssertionError("the TTS worker was not restarted")


def test_worker_killed_mid_audio_stream_cuts_the_response(server: Server) -> None:
    got = b""
    body = {"model": "tts-1", "voice": "alloy", "input": KILL_TEXT, "response_format": "pcm", "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/audio/speech", json=body, timeout=60) as r:
        assert r.status_code == 200
        chunks = r.iter_raw()
        got += next(chunks)
        pid = _kill_tts_worker(server)
        with pytest.raises(httpx.RemoteProtocolError):  # incomplete chunked read, not a short "complete" file
            for chunk in chunks:
                got += chunk
    assert got  # what was synthesized before the kill did arrive
    _wait_tts_back(server, pid)


def test_worker_killed_mid_sse_speech_ends_with_an_error_event(server: Server) -> None:
    events: list[dict] = []
    body = {"model": "tts-1", "voice": "alloy", "input": KILL_TEXT, "response_format": "pcm", "stream_format": "sse"}
    pid = 0
    with httpx.stream("POST", f"{server.base_url}/v1/audio/speech", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 1:
                    pid = _kill_tts_worker(server)
    assert events[0]["type"] == "speech.audio.delta"
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "worker_lost", events[-1]
    assert all(e["type"] != "speech.audio.done" for e in events)
    _wait_tts_back(server, pid)
    ok = httpx.post(f"{server.base_url}/v1/audio/speech", json={**body, "input": SENTENCE}, timeout=60)
    assert _sse_types(ok.text)[-1] == "speech.audio.done"  # the restarted worker streams to the end


def _sse_types(text: str) -> list[str]:
    return [json.loads(line[6:])["type"] for line in text.splitlines() if line.startswith("data: ")]
