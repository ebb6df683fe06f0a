"""The text-to-speech suite (kind ``tts``: speech), through a real server and the openai SDK;
what it says is checked by the packaged Whisper tiny.en called directly."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import ClassVar

import httpx
import numpy as np
import openai
import pytest

from tests.audio_helpers import SENTENCE, decode_seconds, transcribe_in_process, wer
from tests.contract.base import Suite, covers
from tests.helpers import Server

__all__ = ["TtsSuite", "SENTENCE"]

LONG_TEXT = (
    "Good morning everyone. Today we talk about the garden. The roses are red and the grass is green. "
    "We planted three new trees last spring. They grow a little every week. Thank you for listening."
)


class TtsSuite(Suite):
    """An engine subclass sets ``model`` (an English voice) and its native ``sample_rate``."""

    kind = "tts"
    model: ClassVar[str] = "tts"
    sample_rate: ClassVar[int]
    max_wer: ClassVar[float] = 0.2

    def _speak(self, client: openai.OpenAI, fmt: str, text: str = SENTENCE, **kw: object) -> bytes:
        return client.audio.speech.create(model=self.model, voice="alloy", input=text, response_format=fmt, **kw).content

    @covers("speech")
    def test_wav_says_the_text(self, client: openai.OpenAI) -> None:
        wav = self._speak(client, "wav")
        assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
        import soundfile as sf

        samples, rate = sf.read(io.BytesIO(wav))
        assert rate == self.sample_rate and 2.0 < samples.size / rate < 10.0
        heard = transcribe_in_process(wav)
        assert wer(SENTENCE, heard) <= self.max_wer, heard

    @covers("speech")
    @pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
    def test_every_format_decodes(self, client: openai.OpenAI, fmt: str) -> None:
        assert 2.0 < decode_seconds(self._speak(client, fmt)) < 10.0

    @covers("speech")
    def test_pcm_is_raw_s16le_24k(self, server: Server, client: openai.OpenAI) -> None:
        r = httpx.post(
            f"{server.base_url}/v1/audio/speech",
            json={"model": self.model, "voice": "alloy", "input": SENTENCE, "response_format": "pcm"}, timeout=120,
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("audio/pcm")
        assert r.headers["x-audio-sample-rate"] == "24000"
        samples = np.frombuffer(r.content, dtype="<i2")
        assert abs(samples.size / 24000 - decode_seconds(self._speak(client, "wav"))) < 1.0
        assert np.abs(samples).max() > 1000

    @covers("speech")
    def test_speed_changes_duration(self, client: openai.OpenAI) -> None:
        slow = decode_seconds(self._speak(client, "flac", speed=0.5))
        fast = decode_seconds(self._speak(client, "flac", speed=2.0))
        assert slow > 2.5 * fast

    @covers("speech")
    def test_streamed_audio_starts_before_the_end(self, client: openai.OpenAI) -> None:
        arrivals: list[float] = []
        audio = b""
        t0 = time.perf_counter()
        with client.audio.speech.with_streaming_response.create(
            model=self.model, voice="alloy", input=LONG_TEXT, response_format="mp3", extra_body={"stream": True}
        ) as resp:
            assert resp.headers["content-type"].startswith("audio/mpeg")
            for chunk in resp.iter_bytes():
                arrivals.append(time.perf_counter() - t0)
                audio += chunk
        assert len(arrivals) >= 3 and arrivals[0] < 0.6 * arrivals[-1], arrivals
        assert decode_seconds(audio) > 5.0

    @covers("speech")
    def test_stream_friendly_formats_stream_by_default(self, client: openai.OpenAI) -> None:
        """As OpenAI: pcm/mp3/opus/aac audio starts before synthesis ends with no flag at all;
        wav keeps one file with exact headers; ``stream: false`` asks for one file."""
        def arrivals(fmt: str, **extra: object) -> tuple[list[float], bytes]:
            times: list[float] = []
            audio = b""
            t0 = time.perf_counter()
            with client.audio.speech.with_streaming_response.create(
                model=self.model, voice="alloy", input=LONG_TEXT, response_format=fmt, extra_body=extra or None
            ) as resp:
                for chunk in resp.iter_bytes(4096):
                    times.append(time.perf_counter() - t0)
                    audio += chunk
            return times, audio

        times, pcm = arrivals("pcm")
        assert times[0] < 0.6 * times[-1], times[:3] + times[-1:]
        assert len(pcm) / 2 / 24000 > 5.0
        times, wav = arrivals("wav")
        assert decode_seconds(wav) > 5.0 and times[0] > 0.6 * times[-1]  # one file, sent when whole
        times, _ = arrivals("mp3", stream=False)
        assert times[0] > 0.6 * times[-1]

    @covers("speech")
    def test_sse_events_carry_the_audio(self, server: Server) -> None:
        audio = b""
        types = []
        with httpx.stream(
            "POST", f"{server.base_url}/v1/audio/speech", timeout=120,
            json={"model": self.model, "voice": "alloy", "input": SENTENCE, "response_format": "wav", "stream_format": "sse"},
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
        assert rate == self.sample_rate and samples.size / rate > 2.0

    @covers("speech")
    def test_bad_requests_are_400_with_param(self, client: openai.OpenAI) -> None:
        bad = [({"speed": 0.1}, "speed"), ({"speed": 4.5}, "speed"), ({"voice": "nobody"}, "voice"),
               ({"response_format": "ogg"}, "response_format"), ({"input": ""}, "input")]
        for override, param in bad:
            kwargs = {"model": self.model, "voice": "alloy", "input": "Hi.", **override}
            with pytest.raises(openai.BadRequestError) as exc:
                client.audio.speech.create(**kwargs)
            assert exc.value.body["param"] == param, exc.value.body
        with pytest.raises(openai.BadRequestError) as exc:  # a voice does not transcribe
            client.audio.transcriptions.create(model=self.model, file=("t.wav", self._speak(client, "wav", "Hi.")))
        assert exc.value.body["param"] == "model"
