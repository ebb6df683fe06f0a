"""infinity backend: relays to infinity_emb's own server started from a separate interpreter."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ...settings import ConfigError
from ..options import (
    DTypeOptions,
    EngineProcessOptions,
    TextTaskOptions,
    ThreadOptions,
    TrustOptions,
)
from ..registry import Engine

if TYPE_CHECKING:
    from ...config import ModelEntry

__all__ = ["InfinityOptions", "ENGINES"]


class InfinityOptions(TextTaskOptions, EngineProcessOptions, DTypeOptions, ThreadOptions, TrustOptions):
    pass


def _interpreter(entry: ModelEntry) -> None:
    """Before serve starts: infinity's own interpreter is configured and exists."""
    python = getattr(entry.model_config_, "python", None)
    key = f"models.{entry.name}.model_config.python"
    if not python:
        raise ConfigError(
            f"{key}: work_mode infinity needs the path of a Python interpreter where "
            "'infinity-emb[torch,server]==0.0.78' is installed (see docs/embeddings.md)"
        )
    if not os.path.isfile(python):
        raise ConfigError(f"{key}: '{python}' does not exist")


ENGINES = (
    Engine(
        name="infinity",
        backend="gpt_server.backends.infinity.backend:InfinityBackend",
        options=InfinityOptions,
        kinds=frozenset({"embedding", "rerank", "moderation"}),
        description="infinity_emb's server from its own virtualenv (model_config.python)",
        preflight=_interpreter,
    ),
)
