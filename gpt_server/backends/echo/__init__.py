"""A no-op chat backend for benchmarking the serving path (no model, no engine)."""

from __future__ import annotations

from pydantic import Field

from ..options import ParallelOptions
from ..registry import Engine

__all__ = ["EchoOptions", "ENGINES"]


class EchoOptions(ParallelOptions):
    token_interval_ms: float = Field(
        0, ge=0, le=1000, description="a pause before each delta event (a model's decode rhythm; default none)"
    )


ENGINES = (
    Engine(
        name="echo",
        backend="gpt_server.backends.echo.backend:EchoBackend",
        options=EchoOptions,
        kinds=frozenset({"auto"}),
        description="benchmark only: answers without a model",
    ),
)
