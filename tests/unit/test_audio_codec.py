"""Audio decode/encode helpers and the Piper voice map, with real codecs (PyAV's ffmpeg)."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from gpt_server.audio.decode import decode_audio
from gpt_server.audio.encode import PCM_RATE, SPEECH_FORMATS, SpeechEncoder, output_rate, wav_header
from gpt_server.audio.stream import stream_from_thread
from gpt_server.backends.piper.voice import VoiceMap
from gpt_server.errors import BadRequestError
from tests.audio_helpers import decode_seconds, tone_wav

RATE = 22050
TONE = (0.4 * np.sin(2 * np.pi * 440 * np.arange(RATE * 2) / RATE)).astype(np.float32)


def _encode(fmt: str, streaming: bool) -> tuple[bytes, list[int]]:
    enc = SpeechEncoder(fmt, RATE, streaming=streaming)
    sizes = [len(b) for b in (enc.feed(TONE[i : i + RATE // 2]) for i in range(0, TONE.size, RATE // 2))]
    enc2 = SpeechEncoder(fmt, RATE, streaming=streaming)
    data = b"".join(enc2.feed(TONE[i : i + RATE // 2]) for i in range(0, TONE.size, RATE // 2)) + enc2.finish()
    return data, sizes


@pytest.mark.parametrize("fmt", [f for f in SPEECH_FORMATS if f != "pcm"])
@pytest.mark.parametrize("streaming", [True, False])
def test_encode_then_decode(fmt: str, streaming: bool) -> None:
    data, sizes = _encode(fmt, streaming)
    assert decode_seconds(data) == pytest.approx(2.0, abs=0.15)
    samples = decode_audio(data, 16000)
    # the 440 Hz tone survives: dominant frequency of the decoded audio
    window = samples[2000:18000]
    peak_hz = np.argmax(np.abs(np.fft.rfft(window))) * 16000 / window.size
    assert abs(peak_hz - 440) < 5
    if streaming:  # bytes leave the encoder before the end (every format streams)
        assert sum(1 for s in sizes if s) >= 2, sizes


def test_pcm_is_24k_s16le() -> None:
    data, sizes = _encode("pcm", True)
    assert output_rate("pcm", RATE) == PCM_RATE
    assert len(data) // 2 == pytest.approx(2 * PCM_RATE, abs=64)
    assert all(sizes)


def test_wav_headers() -> None:
    data, _ = _encode("wav", False)
    assert data[:4] == b"RIFF" and struct.unpack("<I", data[40:44])[0] == len(data) - 44
    samples, rate = sf.read(io.BytesIO(data))
    assert rate == RATE and samples.size == TONE.size
    streamed, _ = _encode("wav", True)
    assert streamed[4:8] == b"\xff\xff\xff\xff" and streamed[44:] == data[44:]
    assert wav_header(8000, 0)[24:28] == struct.pack("<I", 8000)


def test_decode_resamples_and_rejects() -> None:
    out = decode_audio(tone_wav(1.0, rate=44100), 16000)
    assert out.dtype == np.float32 and out.size == pytest.approx(16000, abs=32)
    for bad in (b"", b"not audio at all" * 50, b"RIFF\x00\x00\x00\x00WAVEfmt "):
        with pytest.raises(BadRequestError) as exc:
            decode_audio(bad)
        assert exc.value.param == "file"
    with pytest.raises(BadRequestError, match="longer"):
        decode_audio(tone_wav(2.0), 16000, max_seconds=1.0)


def _sf_bytes(fmt: str, rate: int, frames: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    x = (np.sin(np.arange(frames) / 5) * 0.3).astype(np.float32)
    sf.write(buf, np.stack([x] * channels, 1) if channels > 1 else x, rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "rate", "frames", "match"),
    [("HTK", 1, 4000, "1 Hz"), ("MAT5", 1, 4000, "1 Hz"), ("WAV", 1, 4000, "1 Hz"), ("WAV", 500_000, 1000, "500000 Hz"),
     ("HTK", 8000, 8000 * 20, "longer")],
)
def test_decode_checks_the_header_before_decoding(fmt: str, rate: int, frames: int, match: str) -> None:
    """Sample rate and length come from the header (PyAV's or libsndfile's) before any decode
    or resample: a 170 KB MAT5 file at 1 Hz would otherwise become two 10 GiB arrays."""
    t0 = time.monotonic()
    with pytest.raises(BadRequestError, match=match) as exc:
        decode_audio(_sf_bytes(fmt, rate, frames), 16000, max_seconds=10.0)
    assert exc.value.param == "file" and time.monotonic() - t0 < 1.0


def test_libsndfile_only_formats_still_decode() -> None:
    """HTK and MAT5 (PyAV cannot open them) are read in blocks and resampled like the rest."""
    assert decode_audio(_sf_bytes("HTK", 8000, 16000), 16000).size == pytest.approx(32000, abs=32)
    out = decode_audio(_sf_bytes("MAT5", 44100, 44100, channels=2), 16000)
    assert out.size == pytest.approx(16000, abs=32) and 0.2 < float(np.abs(out).max()) < 0.4


def test_voice_map() -> None:
    single = VoiceMap({}, 1, {"narrator": "default"})
    assert single.resolve("alloy") is None and single.resolve("NARRATOR") is None
    with pytest.raises(BadRequestError) as exc:
        single.resolve("nobody")
    assert exc.value.param == "voice"
    multi = VoiceMap({"anna": 0, "bob": 1}, 2, {"alloy": "bob", "echo": 0})
    assert multi.resolve("alloy") == 1 and multi.resolve("echo") == 0 and multi.resolve("bob") == 1
    assert multi.resolve("nova") is None
    with pytest.raises(ValueError):
        VoiceMap({"anna": 0}, 1, {"x": "carl"})
    with pytest.raises(ValueError):
        VoiceMap({}, 2, {"x": 5})


def test_stream_from_thread_streams_and_stops() -> None:
    produced: list[int] = []

    def produce(stop: threading.Event):  # noqa: ANN202
        for i in range(100):
            if stop.is_set():
                return
            produced.append(i)
            time.sleep(0.01)
            yield b"%d" % i

    async def main() -> list[bytes]:
        got = []
        agen = stream_from_thread(produce)
        async for chunk in agen:
            got.append(chunk)
            if len(got) == 3:
                break
        await agen.aclose()
        await asyncio.sleep(0.1)
        return got

    got = asyncio.run(main())
    assert got == [b"0", b"1", b"2"] and len(produced) < 20

    def boom(stop: threading.Event):  # noqa: ANN202
        yield b"x"
        raise RuntimeError("synthesis failed")

    async def collect() -> list[bytes]:
        return [c async for c in stream_from_thread(boom)]

    with pytest.raises(RuntimeError):
        asyncio.run(collect())


@pytest.mark.parametrize(("container", "codec"), [("mp4", "aac"), ("webm", "libopus"), ("ogg", "libopus")])
def test_decode_upload_containers(container: str, codec: str) -> None:
    """m4a / webm / ogg uploads (as browsers and phones record them) decode to 16 kHz mono."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=48000, layout="mono")
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=48000)
        frame = av.AudioFrame.from_ndarray((TONE * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        for fr in [*resampler.resample(frame), *resampler.resample(None)]:
            fr.pts = None
            for packet in stream.encode(fr):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    samples = decode_audio(buf.getvalue(), 16000)
    assert samples.size / 16000 == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
def test_nothing_to_say_is_still_a_valid_file(fmt: str) -> None:
    data = SpeechEncoder(fmt, RATE, streaming=True).finish()
    assert 0.05 < decode_seconds(data) < 0.2
