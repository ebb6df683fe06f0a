"""The transformers backend (work_mode: hf)."""

from __future__ import annotations

from pydantic import Field

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
    prefix_cache_mb: int = Field(
        256, ge=0, le=1_048_576,
        description="KV cache kept from finished requests (MiB, on the model's device) so that a later prompt "
        "sharing their prefix — the next turn of a chat, a common system prompt — prefills only the rest; 0 = off",
    )


ENGINES = (
    Engine(
        name="hf",
        backend="gpt_server.backends.hf.backend:HFBackend",
        options=HFOptions,
        kinds=frozenset({"auto"}),
        description="transformers models: chat, completions, vision, LoRA adapters",
    ),
)
