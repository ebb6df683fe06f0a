"""infinity backend: relays to infinity_emb's own server started from a separate interpreter."""

from __future__ import annotations

from ..options import DTypeOptions, EngineProcessOptions, TextTaskOptions, ThreadOptions
from ..registry import Engine

__all__ = ["InfinityOptions", "ENGINES"]


class InfinityOptions(TextTaskOptions, EngineProcessOptions, DTypeOptions, ThreadOptions):
    pass


ENGINES = (
    Engine(
        name="infinity",
        backend="gpt_server.backends.infinity.backend:InfinityBackend",
        options=InfinityOptions,
        kinds=frozenset({"embedding", "rerank", "moderation"}),
        description="infinity_emb's server from its own virtualenv (model_config.python)",
    ),
)
