"""``invoke`` for embed / rerank / moderate / classify, written once over three primitives.

A backend (sentence-transformers in process, infinity's server …) implements
``embed_items``, ``score_pairs`` and ``classify_items``; this base validates the worker
payload, applies ``dimensions``, sorting, thresholds and category mapping, and builds
the final wire body.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from ...config import ConfigError
from ...errors import BadRequestError, InternalError
from ...protocol.embeddings import (
    EmbedPayload,
    check_dimensions,
    embedding_response,
    fit_dimensions,
)
from ...protocol.moderation import (
    ClassifyPayload,
    classify_result,
    label_categories,
    moderation_result,
)
from ...protocol.rerank import RerankPayload, rerank_response
from ..base import Backend, BackendSpec, InvokeResult

__all__ = ["TextTaskBackend", "KIND_CAPABILITIES", "DEFAULT_THRESHOLD", "parse_payload"]

KIND_CAPABILITIES: dict[str, frozenset[str]] = {
    "embedding": frozenset({"embed"}),
    "rerank": frozenset({"rerank"}),
    "moderation": frozenset({"moderate", "classify"}),
}
DEFAULT_THRESHOLD = 0.5
_OFFLOAD_ITEMS = 64  # build large bodies off the event loop

P = TypeVar("P", bound=BaseModel)


def parse_payload(model: type[P], payload: dict[str, Any]) -> P:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(p) for p in e["loc"]) or None
        raise BadRequestError(f"invalid payload: {loc}: {e['msg']}", param=loc) from None


class TextTaskBackend(Backend):
    """Base for embedding / rerank / classification backends."""

    capabilities = frozenset({"embed", "rerank", "moderate", "classify"})

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        kind = spec.entry.kind
        if kind not in KIND_CAPABILITIES:
            raise ConfigError(
                f"models.{spec.entry.name}: work_mode '{spec.entry.work_mode}' serves model_type "
                f"embedding, rerank or moderation, not '{spec.entry.model_type}'"
            )
        self.kind = kind
        self.capabilities = KIND_CAPABILITIES[kind]  # type: ignore[misc]
        mc = spec.entry.model_config_
        self.threshold = mc.moderation_threshold if mc.moderation_threshold is not None else DEFAULT_THRESHOLD
        self.labels: list[str] = []
        self.categories: list[str] = []
        self.dimension = 0

    # ---- primitives -------------------------------------------------------------
    async def embed_items(self, items: list[str | list[int]]) -> tuple[np.ndarray, list[int]]:
        raise NotImplementedError

    async def score_pairs(self, query: str, documents: list[str], max_tokens_per_doc: int | None) -> tuple[list[float], int]:
        raise NotImplementedError

    async def classify_items(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        raise NotImplementedError

    def set_labels(self, labels: list[str]) -> None:
        self.labels = labels
        self.categories = label_categories(labels, self.spec.entry.model_config_.moderation_label_map)

    # ---- invoke -----------------------------------------------------------------
    async def invoke(self, capability: str, payload: dict[str, Any]) -> InvokeResult:
        if capability not in self.capabilities:
            raise BadRequestError(f"this model does not support {capability}", param="model")
        if capability == "embed":
            return await self._embed(parse_payload(EmbedPayload, payload))
        if capability == "rerank":
            return await self._rerank(parse_payload(RerankPayload, payload))
        return await self._classify(capability, parse_payload(ClassifyPayload, payload))

    async def _embed(self, p: EmbedPayload) -> dict[str, Any]:
        dims = check_dimensions(p.dimensions, self.dimension, self.spec.entry.model_config_.matryoshka_dims)
        vectors, tokens = await self.embed_items(p.inputs)
        if len(vectors) != len(p.inputs):
            raise InternalError("the engine returned a wrong number of embeddings")

        def build() -> dict[str, Any]:
            return embedding_response(fit_dimensions(vectors, dims), tokens, p.encoding_format)

        return await asyncio.to_thread(build) if len(p.inputs) > _OFFLOAD_ITEMS else build()

    async def _rerank(self, p: RerankPayload) -> dict[str, Any]:
        if p.documents:
            scores, tokens = await self.score_pairs(p.query, p.documents, p.max_tokens_per_doc)
        else:
            scores, tokens = [], 0
        return rerank_response(
            scores, p.documents, top_n=p.top_n, return_documents=p.return_documents, tokens=tokens
        )

    async def _classify(self, capability: str, p: ClassifyPayload) -> dict[str, Any]:
        scores, tokens = await self.classify_items(p.inputs)
        if capability == "moderate":
            threshold = p.threshold if p.threshold is not None else self.threshold
            return {"results": [moderation_result(s, self.categories, threshold) for s in scores]}
        total = int(sum(tokens))
        return {
            "object": "list",
            "data": [classify_result(i, s, self.labels) for i, s in enumerate(scores)],
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }
