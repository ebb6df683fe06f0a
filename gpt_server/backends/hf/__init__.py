"""The transformers backend (work_mode: hf)."""

from __future__ import annotations

from ..options import (
    ChatOptions,
    DTypeOptions,
    GrammarOptions,
    LoraOptions,
    MediaOptions,
    ParallelOptions,
    ThreadOptions,
    TrustOptions,
)
from ..registry import Engine

__all__ = ["HFOptions", "ENGINES"]


class HFOptions(
    ChatOptions, GrammarOptions, MediaOptions, DTypeOptions, LoraOptions, ParallelOptions, ThreadOptions, TrustOptions
):
    pass


ENGINES = (
    Engine(
        name="hf",
        backend="gpt_server.backends.hf.backend:HFBackend",
        options=HFOptions,
        kinds=frozenset({"auto"}),
        description="transformers models: chat, completions, vision, LoRA adapters",
    ),
)
