"""Piper backend (ONNX VITS voices): text-to-speech, whole files or streamed sentence by sentence."""

from __future__ import annotations

from pydantic import Field

from ..options import ParallelOptions, ThreadOptions
from ..registry import Engine

__all__ = ["PiperOptions", "ENGINES"]


class PiperOptions(ParallelOptions, ThreadOptions):
    voices: dict[str, int | str] | None = Field(
        None, description="voice name → speaker id/name of the voice model (OpenAI names map to the default voice)"
    )
    max_input_chars: int | None = Field(None, ge=1, le=100_000, description="longest input accepted (default 4096)")


ENGINES = (
    Engine(
        name="piper",
        backend="gpt_server.backends.piper.backend:PiperBackend",
        options=PiperOptions,
        kinds=frozenset({"tts"}),
        description="Piper ONNX voices: text to speech",
    ),
)
