"""A no-op chat backend for benchmarking the serving path (no model, no engine)."""

from __future__ import annotations

from ..options import ParallelOptions
from ..registry import Engine

__all__ = ["EchoOptions", "ENGINES"]


class EchoOptions(ParallelOptions):
    pass


ENGINES = (
    Engine(
        name="echo",
        backend="gpt_server.backends.echo.backend:EchoBackend",
        options=EchoOptions,
        kinds=frozenset({"auto"}),
        description="benchmark only: answers without a model",
    ),
)
