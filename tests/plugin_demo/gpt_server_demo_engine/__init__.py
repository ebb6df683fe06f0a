"""A third-party engine for GPT Server, installed as its own package.

It declares one engine, ``work_mode: mean_pool``, through the entry-point group
``gpt_server.backends``: text embeddings from any transformers encoder, mean-pooled over
the attention mask and L2-normalised, run in a thread. This module stays light (options
and the declaration); the backend module imports torch only when a worker starts.
"""

from __future__ import annotations

from pydantic import Field

from gpt_server.backends.options import TextTaskOptions, ThreadOptions
from gpt_server.backends.registry import Engine

__all__ = ["MeanPoolOptions", "ENGINE"]


class MeanPoolOptions(TextTaskOptions, ThreadOptions):
    max_length: int = Field(256, ge=8, le=8192, description="tokens kept per input")


ENGINE = Engine(
    name="mean_pool",
    backend="gpt_server_demo_engine.backend:MeanPoolBackend",
    options=MeanPoolOptions,
    kinds=frozenset({"embedding"}),
    description="mean-pooled transformers embeddings (demo plug-in)",
)
