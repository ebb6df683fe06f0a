"""Decode uploaded audio (wav, mp3, flac, ogg/opus, m4a, webm …) to mono float32 samples."""

from __future__ import annotations

import io
import logging

import numpy as np

from ..errors import BadRequestError

__all__ = ["decode_audio", "MAX_DECODE_SECONDS"]

log = logging.getLogger(__name__)

MAX_DECODE_SECONDS = 3600.0
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 64
_BLOCK_FRAMES = 65_536


def _bad(message: str) -> BadRequestError:
    return BadRequestError(message, param="file", code="invalid_audio")


def _check_format(rate: int, channels: int) -> None:
    """The header's sample rate and channel count, before anything is decoded or resampled
    (a file that declares 1 Hz would be upsampled 16000-fold)."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise _bad(f"the audio declares a sample rate of {rate} Hz; supported: {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise _bad(f"the audio declares {channels} channels; supported: 1 to {MAX_CHANNELS}")


def _decode_av(data: bytes, rate: int, max_samples: int) -> np.ndarray:
    import av

    parts: list[np.ndarray] = []
    total = 0
    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise _bad("the file has no audio stream")
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        if ctx.sample_rate:
            _check_format(ctx.sample_rate, ctx.channels or 1)
        if container.duration and container.duration / 1e6 > max_samples / rate + 1:
            raise _too_long(max_samples, rate)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in container.decode(stream):
            _check_format(frame.sample_rate, len(frame.layout.channels))
            # what this frame becomes, checked before the resampler allocates it
            if total + frame.samples * rate / frame.sample_rate > max_samples + rate:
                raise _too_long(max_samples, rate)
            for out in resampler.resample(frame):
                arr = out.to_ndarray().reshape(-1)
                parts.append(arr)
                total += arr.size
        for out in resampler.resample(None):
            parts.append(out.to_ndarray().reshape(-1))
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)


def _decode_soundfile(data: bytes, rate: int, max_samples: int) -> np.ndarray:
    """Formats only libsndfile reads (HTK, MAT, …): header checked first, then read in blocks,
    each mixed to mono and resampled as it comes, so memory follows the output's length."""
    import av
    import soundfile as sf

    parts: list[np.ndarray] = []
    with sf.SoundFile(io.BytesIO(data)) as f:
        sr = int(f.samplerate)
        _check_format(sr, int(f.channels))
        max_frames = int(max_samples / rate * sr) + sr
        if f.frames > max_frames:
            raise _too_long(max_samples, rate)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate) if sr != rate else None
        read = 0
        for block in f.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
            read += len(block)
            if read > max_frames:
                raise _too_long(max_samples, rate)
            mono = np.ascontiguousarray(block.mean(axis=1, dtype=np.float32))
            if resampler is None:
                parts.append(mono)
                continue
            frame = av.AudioFrame.from_ndarray(mono.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = sr
            parts.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        if resampler is not None:
            parts.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)


def _too_long(max_samples: int, rate: int) -> BadRequestError:
    return _bad(f"the audio is longer than the {max_samples / rate:.0f} s this model accepts")


def decode_audio(data: bytes, sample_rate: int = 16000, max_seconds: float = MAX_DECODE_SECONDS) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at ``sample_rate``; ``BadRequestError`` for a bad file."""
    if not data:
        raise _bad("the audio file is empty")
    max_samples = int(max_seconds * sample_rate)
    try:
        samples = _decode_av(data, sample_rate, max_samples)
    except BadRequestError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's fault
        log.debug("PyAV could not decode the upload (%s); trying soundfile", exc)
        try:
            samples = _decode_soundfile(data, sample_rate, max_samples)
        except BadRequestError:
            raise
        except Exception:  # noqa: BLE001
            raise _bad("could not decode the audio file (supported: wav, mp3, flac, ogg/opus, m4a, webm …)") from None
    if samples.size > max_samples:
        raise _too_long(max_samples, sample_rate)
    if samples.size == 0:
        raise _bad("the audio file contains no samples")
    return samples
