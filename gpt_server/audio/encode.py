"""Encode synthesized speech incrementally: feed sample blocks, get bytes out as they are ready.

Formats (OpenAI's ``response_format``): mp3 (LAME), opus (Ogg Opus, 48 kHz), aac (ADTS),
flac, wav (16-bit PCM) and pcm (raw signed 16-bit little-endian, mono, 24 kHz as OpenAI's).
mp3/aac/flac/wav keep the voice's own sample rate. All encoders are PyAV's bundled ffmpeg.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SPEECH_FORMATS", "MEDIA_TYPES", "PCM_RATE", "SpeechEncoder", "output_rate", "wav_header"]

PCM_RATE = 24000

MEDIA_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
SPEECH_FORMATS = tuple(MEDIA_TYPES)


@dataclass(frozen=True)
class _Codec:
    container: str
    codec: str
    sample_format: str
    rate: int | None  # None = the voice's rate
    options: dict[str, str] | None = None


_CODECS: dict[str, _Codec] = {
    "mp3": _Codec("mp3", "libmp3lame", "s16p", None),
    # short Ogg pages so streamed opus leaves the muxer every ~100 ms, not every second
    "opus": _Codec("ogg", "libopus", "s16", 48000, {"page_duration": "100000"}),
    "aac": _Codec("adts", "aac", "fltp", None),
    "flac": _Codec("flac", "flac", "s16", None),
}


def output_rate(fmt: str, in_rate: int) -> int:
    """The sample rate of the audio ``SpeechEncoder(fmt, in_rate)`` produces."""
    if fmt == "pcm":
        return PCM_RATE
    codec = _CODECS.get(fmt)
    return (codec.rate if codec and codec.rate else in_rate)


class _Sink:
    """A write-only, non-seekable file for PyAV: collects what the muxer writes."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: Any) -> int:
        b = bytes(data)
        self._parts.append(b)
        return len(b)

    def flush(self) -> None:
        return None

    def drain(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def wav_header(rate: int, n_bytes: int | None) -> bytes:
    """RIFF/WAVE header for mono 16-bit PCM; ``n_bytes=None`` = unknown length (streaming)."""
    data_size = 0xFFFFFFFF if n_bytes is None else n_bytes
    riff_size = 0xFFFFFFFF if n_bytes is None else 36 + n_bytes
    return (
        b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data" + struct.pack("<I", data_size)
    )


def _to_int16(samples: np.ndarray) -> np.ndarray:
    if samples.dtype == np.int16:
        return samples.reshape(-1)
    return (np.clip(samples.reshape(-1), -1.0, 1.0) * 32767.0).astype(np.int16)


class SpeechEncoder:
    """Mono speech at ``in_rate`` → bytes of ``fmt``; ``feed`` blocks, then ``finish`` once.

    ``streaming=True`` emits bytes as soon as the encoder has them (wav gets a header with
    unknown length); ``streaming=False`` may hold everything until ``finish`` so headers
    carry exact sizes (flac STREAMINFO, wav lengths).
    """

    def __init__(self, fmt: str, in_rate: int, *, streaming: bool = True) -> None:
        if fmt not in MEDIA_TYPES:
            raise ValueError(f"unknown speech format '{fmt}'")
        self.fmt = fmt
        self.in_rate = in_rate
        self.streaming = streaming
        self.media_type = MEDIA_TYPES[fmt]
        self._pcm: list[bytes] = []  # wav (whole file)
        self._header_sent = False
        # PyAV objects (av has no type information): resampler, output container, audio stream
        self._resampler: Any = None
        self._container: Any = None
        self._stream: Any = None
        self._sink: Any = None  # _Sink (streaming) or io.BytesIO (whole file)
        self._pts = 0
        self._fed = 0
        if fmt == "pcm" and in_rate != PCM_RATE:
            self._resampler = self._make_resampler("s16", PCM_RATE)
        elif fmt in _CODECS:
            self._open_codec(_CODECS[fmt])

    def _make_resampler(self, fmt: str, rate: int) -> Any:
        import av

        return av.AudioResampler(format=fmt, layout="mono", rate=rate)

    def _open_codec(self, c: _Codec) -> None:
        import av

        rate = c.rate or self.in_rate
        self._sink = _Sink() if self.streaming else io.BytesIO()
        opts = {"flush_packets": "1", **(c.options or {})} if self.streaming else {}
        self._container = av.open(self._sink, mode="w", format=c.container, options=opts)
        self._stream = self._container.add_stream(c.codec, rate=rate, layout="mono")
        self._stream.format = c.sample_format
        self._resampler = self._make_resampler(c.sample_format, rate)

    def _frames(self, pcm16: np.ndarray | None) -> Any:
        import av

        if pcm16 is None:
            return self._resampler.resample(None)
        frame = av.AudioFrame.from_ndarray(pcm16.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.in_rate
        frame.pts = self._pts
        self._pts += pcm16.size
        return self._resampler.resample(frame)

    def _encode(self, frames: Any) -> bytes:
        for fr in frames:
            fr.pts = None
            for packet in self._stream.encode(fr):
                self._container.mux(packet)
        return self._sink.drain() if isinstance(self._sink, _Sink) else b""

    def feed(self, samples: np.ndarray) -> bytes:
        """Encode one block (float in [-1, 1] or int16); the bytes ready now."""
        pcm16 = _to_int16(samples)
        if pcm16.size == 0:
            return b""
        self._fed += pcm16.size
        if self.fmt in ("wav", "pcm"):
            return self._feed_raw(pcm16)
        return self._encode(self._frames(pcm16))

    def _feed_raw(self, pcm16: np.ndarray) -> bytes:
        if self._resampler is not None:
            raw = b"".join(bytes(f.planes[0])[: f.samples * 2] for f in self._frames(pcm16))
        else:
            raw = pcm16.astype("<i2").tobytes()
        if self.fmt == "pcm":
            return raw
        if not self.streaming:
            self._pcm.append(raw)
            return b""
        head = b"" if self._header_sent else wav_header(self.in_rate, None)
        self._header_sent = True
        return head + raw

    def finish(self) -> bytes:
        """Flush the encoder and close the container; the remaining bytes."""
        if self.fmt == "pcm":
            if self._resampler is None:
                return b""
            return b"".join(bytes(f.planes[0])[: f.samples * 2] for f in self._frames(None))
        if self.fmt == "wav":
            if self.streaming:
                return b"" if self._header_sent else wav_header(self.in_rate, None)
            body = b"".join(self._pcm)
            return wav_header(self.in_rate, len(body)) + body
        # nothing to say (e.g. input was only punctuation): a valid file of 100 ms silence
        head = self.feed(np.zeros(self.in_rate // 10, np.int16)) if self._fed == 0 else b""
        out = head + self._encode(self._frames(None))
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        if isinstance(self._sink, _Sink):
            return out + self._sink.drain()
        return self._sink.getvalue()
