"""Decode uploaded audio (wav, mp3, flac, ogg/opus, m4a, webm …) to mono float32 samples."""

from __future__ import annotations

import io
import logging

import numpy as np

from ..errors import BadRequestError

__all__ = ["decode_audio", "MAX_DECODE_SECONDS"]

log = logging.getLogger(__name__)

MAX_DECODE_SECONDS = 3600.0


def _bad(message: str) -> BadRequestError:
    return BadRequestError(message, param="file", code="invalid_audio")


def _decode_av(data: bytes, rate: int, max_samples: int) -> np.ndarray:
    import av

    parts: list[np.ndarray] = []
    total = 0
    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise _bad("the file has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                arr = out.to_ndarray().reshape(-1)
                parts.append(arr)
                total += arr.size
            if total > max_samples:
                raise _too_long(max_samples, rate)
        for out in resampler.resample(None):
            parts.append(out.to_ndarray().reshape(-1))
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)


def _decode_soundfile(data: bytes, rate: int) -> np.ndarray:
    import soundfile as sf

    samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if sr == rate or mono.size == 0:
        return mono.astype(np.float32, copy=False)
    # linear resampling is enough for the rare files PyAV cannot open
    n_out = int(round(mono.size * rate / sr))
    x_old = np.linspace(0.0, 1.0, mono.size, endpoint=False)
    x_new = np.linspace(0.0, 1.0, n_out, endpoint=False)
    return np.interp(x_new, x_old, mono).astype(np.float32)


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
            samples = _decode_soundfile(data, sample_rate)
        except Exception:  # noqa: BLE001
            raise _bad("could not decode the audio file (supported: wav, mp3, flac, ogg/opus, m4a, webm …)") from None
    if samples.size > max_samples:
        raise _too_long(max_samples, sample_rate)
    if samples.size == 0:
        raise _bad("the audio file contains no samples")
    return samples
