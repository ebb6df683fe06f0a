"""sentence-transformers backend: embeddings (text, and images for CLIP-style models), rerank,
moderation/classification."""

from __future__ import annotations

from ..options import MediaOptions, TextTaskOptions, ThreadOptions, TrustOptions
from ..registry import Engine

__all__ = ["SentenceTransformersOptions", "ENGINES"]


class SentenceTransformersOptions(TextTaskOptions, ThreadOptions, MediaOptions, TrustOptions):
    """The media options bound the image inputs of a model that embeds images (CLIP-style)."""


ENGINES = (
    Engine(
        name="sentence_transformers",
        backend="gpt_server.backends.sentence_transformers.backend:SentenceTransformersBackend",
        options=SentenceTransformersOptions,
        kinds=frozenset({"embedding", "rerank", "moderation"}),
        description="embeddings (text; images too for CLIP-style models), cross-encoder rerank and classifiers in process (dynamic batching)",
    ),
)
