"""faster-whisper backend (Whisper on CTranslate2): transcriptions and translations."""

from __future__ import annotations

from pydantic import Field

from ..options import ParallelOptions, ThreadOptions
from ..registry import Engine

__all__ = ["FasterWhisperOptions", "ENGINES"]


class FasterWhisperOptions(ParallelOptions, ThreadOptions):
    compute_type: str | None = Field(
        None, max_length=32, description="CTranslate2 compute type (default int8 on CPU, float16 on GPU)"
    )
    beam_size: int | None = Field(None, ge=1, le=16, description="beam size (default 5)")
    max_audio_seconds: float | None = Field(
        None, gt=0, le=86_400, description="longest audio accepted for transcription (default 3600 s)"
    )


ENGINES = (
    Engine(
        name="faster_whisper",
        backend="gpt_server.backends.faster_whisper.backend:FasterWhisperBackend",
        options=FasterWhisperOptions,
        kinds=frozenset({"asr"}),
        description="Whisper speech to text on CTranslate2",
    ),
)
