"""``invoke`` for embed / rerank / moderate / classify, written once over three primitives.

A backend (sentence-transformers in process, infinity's server …) implements
``embed_items``, ``score_pairs`` and ``classify_items``; this base validates the worker
payload, applies ``dimensions``, sorting, thresholds and category mapping, and builds
the final wire body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel

from ...chat.media import MediaFetcher
from ...errors import BadRequestError, InternalError, ServiceUnavailableError
from ...protocol.embeddings import EMBED, EmbeddingInput, EmbedPayload
from ...protocol.kinds import Capability, kind
from ...protocol.moderation import MODERATE, ClassifyPayload
from ...protocol.rerank import RERANK, RerankPayload
from ...settings import ConfigError
from ..base import ANSWER_SINK, Backend, BackendSpec, InvokeResult, payload_as
from ..batching import DynamicBatcher
from ..options import TextTaskOptions
from .media import load_images, refuse_images
from .results import (
    check_dimensions,
    classify_result,
    embedding_response,
    fit_dimensions,
    label_categories,
    moderation_result,
    rerank_response,
)

__all__ = ["TextTaskBackend", "BatchedTextTaskBackend", "DEFAULT_THRESHOLD", "TEXT_TASK_KINDS", "DEFAULT_BATCH_SIZE", "DEFAULT_WAIT_MS"]

TEXT_TASK_KINDS = ("embedding", "rerank", "moderation")
DEFAULT_THRESHOLD = 0.5
DEFAULT_BATCH_SIZE = 32
DEFAULT_WAIT_MS = 3.0
_OFFLOAD_ITEMS = 64  # build large bodies off the event loop


class TextTaskBackend(Backend):
    """Base for embedding / rerank / classification backends."""

    capabilities = frozenset({"embed", "rerank", "moderate", "classify"})
    options: TextTaskOptions

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        kind_name = spec.entry.kind
        if kind_name not in TEXT_TASK_KINDS:
            raise ConfigError(
                f"models.{spec.entry.name}: work_mode '{spec.entry.work_mode}' serves model_type "
                f"embedding, rerank or moderation, not '{spec.entry.model_type}'"
            )
        self.kind = kind_name
        # the kind's capabilities this class implements (embed, rerank, moderate, classify)
        self.capabilities = kind(kind_name).capabilities & type(self).capabilities
        mc = self.options
        self.threshold = mc.moderation_threshold if mc.moderation_threshold is not None else DEFAULT_THRESHOLD
        self.labels: list[str] = []
        self.categories: list[str] = []
        self.dimension = 0
        # set by a backend whose model embeds images (the inputs then hold decoded RGB images)
        self.image_fetcher: MediaFetcher | None = None

    # ---- primitives -------------------------------------------------------------
    async def embed_items(self, items: list[Any]) -> tuple[np.ndarray, list[int]]:
        """Vectors and token counts of texts, token-id lists and (where the model takes them)
        decoded RGB images, which count no tokens."""
        raise NotImplementedError

    async def score_pairs(self, query: str, documents: list[str], max_tokens_per_doc: int | None) -> tuple[list[float], int]:
        raise NotImplementedError

    async def classify_items(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        raise NotImplementedError

    def set_labels(self, labels: list[str]) -> None:
        self.labels = labels
        self.categories = label_categories(labels, self.options.moderation_label_map)

    # ---- invoke -----------------------------------------------------------------
    async def invoke(self, capability: Capability, payload: BaseModel) -> InvokeResult:
        if capability not in self.capabilities:
            raise BadRequestError(f"this model does not support {capability}", param="model")
        if capability == EMBED:
            return await self._embed(payload_as(payload, EmbedPayload))
        if capability == RERANK:
            return await self._rerank(payload_as(payload, RerankPayload))
        return await self._classify(capability, payload_as(payload, ClassifyPayload))

    async def _embed_inputs(self, inputs: list[EmbeddingInput]) -> list[Any]:
        """The inputs as ``embed_items`` takes them: images fetched and decoded, or refused."""
        if self.image_fetcher is None:
            refuse_images(inputs, f"model '{self.spec.entry.name}' embeds text only")
            return inputs
        return await load_images(inputs, self.image_fetcher)

    async def _embed(self, p: EmbedPayload) -> dict[str, Any]:
        dims = check_dimensions(p.dimensions, self.dimension, self.options.matryoshka_dims)
        vectors, tokens = await self.embed_items(await self._embed_inputs(p.inputs))
        return await _embed_body(p, dims, vectors, tokens)

    async def _rerank(self, p: RerankPayload) -> dict[str, Any]:
        if p.documents:
            scores, tokens = await self.score_pairs(p.query, p.documents, p.max_tokens_per_doc)
        else:
            scores, tokens = [], 0
        return rerank_response(
            scores, p.documents, top_n=p.top_n, return_documents=p.return_documents, tokens=tokens
        )

    async def _classify(self, capability: Capability, p: ClassifyPayload) -> dict[str, Any]:
        scores, tokens = await self.classify_items(p.inputs)
        if capability == MODERATE:
            threshold = p.threshold if p.threshold is not None else self.threshold
            return {"results": [moderation_result(s, self.categories, threshold) for s in scores]}
        total = int(sum(tokens))
        return {
            "object": "list",
            "data": [classify_result(i, s, self.labels) for i, s in enumerate(scores)],
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }


class BatchedTextTaskBackend(TextTaskBackend):
    """A text-task backend whose engine runs a list of items at a time on one thread
    (``run_batch``): concurrent requests are coalesced by a ``DynamicBatcher``."""

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        mc = self.options
        self.max_batch_size = mc.max_batch_size or DEFAULT_BATCH_SIZE
        self.batch_wait_ms = mc.batch_wait_ms if mc.batch_wait_ms is not None else DEFAULT_WAIT_MS
        self.batcher: DynamicBatcher[Any, Any] | None = None
        self._context: int | None = None

    def start_batcher(self, run_batch: Callable[[list[Any]], list[Any]], context: int | None) -> None:
        """Serve from ``run_batch`` (the loaded engine's) from now on."""
        self._context = context
        self.batcher = DynamicBatcher(
            run_batch, max_batch_size=self.max_batch_size, max_wait_ms=self.batch_wait_ms,
            name=f"batch-{self.spec.entry.name}",
        )

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.shutdown()
            self.batcher = None
        if self.image_fetcher is not None:
            self.image_fetcher.close()
            self.image_fetcher = None

    @property
    def capacity(self) -> int:
        return self.max_batch_size

    @property
    def context_length(self) -> int | None:
        return self._context

    def healthy(self) -> bool:
        return self.batcher is not None

    def _batcher(self) -> DynamicBatcher[Any, Any]:
        if self.batcher is None:
            raise ServiceUnavailableError("the engine is not loaded")
        return self.batcher

    async def embed_items(self, items: list[Any]) -> tuple[np.ndarray, list[int]]:
        return _stacked(await self._batcher().submit(items))

    async def _embed(self, p: EmbedPayload) -> dict[str, Any]:
        """As ``TextTaskBackend._embed``; where the worker offers an ``ANSWER_SINK`` and the request
        runs on its own, the body is made and sent on the engine's thread, right after the vectors."""
        sink = ANSWER_SINK.get()
        if sink is None:
            return await super()._embed(p)
        dims = check_dimensions(p.dimensions, self.dimension, self.options.matryoshka_dims)
        inputs = await self._embed_inputs(p.inputs)

        def then(outs: list[Any]) -> None:  # the engine's thread
            if len(outs) == len(p.inputs):
                vectors, tokens = _stacked(outs)
                sink.send(embedding_response(fit_dimensions(vectors, dims), tokens, p.encoding_format))

        outs = await self._batcher().submit(inputs, then=then)
        if sink.sent:
            return {}  # the answer has gone
        return await _embed_body(p, dims, *_stacked(outs))


def _stacked(outs: list[Any]) -> tuple[np.ndarray, list[int]]:
    """A batch engine's (vector, tokens) per item → the vectors as one array, the token counts."""
    return np.stack([v for v, _ in outs]), [n for _, n in outs]


async def _embed_body(p: EmbedPayload, dims: int | None, vectors: np.ndarray, tokens: list[int]) -> dict[str, Any]:
    """The embeddings answer for ``p``: the vectors cut to ``dims`` and encoded as asked (a thread's
    work for many items)."""
    if len(vectors) != len(p.inputs):
        raise InternalError("the engine returned a wrong number of embeddings")

    def build() -> dict[str, Any]:
        return embedding_response(fit_dimensions(vectors, dims), tokens, p.encoding_format)

    return await asyncio.to_thread(build) if len(p.inputs) > _OFFLOAD_ITEMS else build()
