"""sentence-transformers backend: embeddings, rerank, moderation/classification."""

from __future__ import annotations

from ..options import TextTaskOptions, ThreadOptions
from ..registry import Engine

__all__ = ["SentenceTransformersOptions", "ENGINES"]


class SentenceTransformersOptions(TextTaskOptions, ThreadOptions):
    pass


ENGINES = (
    Engine(
        name="sentence_transformers",
        backend="gpt_server.backends.sentence_transformers.backend:SentenceTransformersBackend",
        options=SentenceTransformersOptions,
        kinds=frozenset({"embedding", "rerank", "moderation"}),
        description="embeddings, cross-encoder rerank and classifiers in process (dynamic batching)",
    ),
)
