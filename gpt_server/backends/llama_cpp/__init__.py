"""llama.cpp backend (GGUF) with batched decoding of several sequences."""

from __future__ import annotations

from pydantic import Field

from ..options import ChatOptions, GrammarOptions, ParallelOptions, ThreadOptions
from ..registry import Engine

__all__ = ["LlamaCppOptions", "ENGINES"]


class LlamaCppOptions(ChatOptions, GrammarOptions, ParallelOptions, ThreadOptions):
    n_batch: int | None = Field(None, ge=16, le=65536, description="most tokens per engine step (default 512)")
    n_gpu_layers: int | None = Field(None, ge=-1, description="layers offloaded to the GPU (-1 = all)")


ENGINES = (
    Engine(
        name="llama_cpp",
        backend="gpt_server.backends.llama_cpp.backend:LlamaCppBackend",
        options=LlamaCppOptions,
        kinds=frozenset({"auto"}),
        description="GGUF chat/completion models through llama.cpp, several sequences decoded together",
    ),
)
