"""Rerank: the Cohere / Jina wire schema, the worker payload, and the result shape.

Served at ``/v1/rerank`` (Cohere v1, Jina, Dify), ``/rerank`` and ``/v2/rerank`` (Cohere
v2). Documents are strings, ``{"text": ...}`` objects, or ``{"content": [{"type":
"text", "text": ...}]}`` (Dify's multimodal shape, text parts only).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .kinds import Kind, declare_capability, declare_kind
from .openai import ModelName, OpenAIBaseModel

__all__ = ["RERANK_LIMITS", "RerankRequest", "RerankPayload", "RERANK", "rerank_payload"]


class _RerankLimits:
    max_documents = 10_000
    max_text_chars = 1_000_000


RERANK_LIMITS = _RerankLimits()


def _doc_text(d: Any, i: int) -> str:
    where = f"documents[{i}]"
    if isinstance(d, str):
        text = d
    elif isinstance(d, dict) and isinstance(d.get("text"), str):
        text = d["text"]
    elif isinstance(d, dict) and isinstance(d.get("content"), list):
        parts = d["content"]
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts):
            raise ValueError(f"{where}: only text content parts are supported by this server")
        text = "\n".join(p["text"] for p in parts)
    else:
        raise ValueError(f"{where} must be a string or an object with a 'text' field")
    if len(text) > RERANK_LIMITS.max_text_chars:
        raise ValueError(f"{where} is longer than {RERANK_LIMITS.max_text_chars} characters")
    return text


class RerankRequest(OpenAIBaseModel):
    model: ModelName = ""
    query: str = Field(min_length=1, max_length=RERANK_LIMITS.max_text_chars)
    documents: list[Any] = Field(max_length=RERANK_LIMITS.max_documents)
    top_n: int | None = Field(default=None, ge=0, le=RERANK_LIMITS.max_documents)
    return_documents: bool | None = None
    max_tokens_per_doc: int | None = Field(default=None, ge=1, le=1_000_000)

    @field_validator("query", mode="before")
    @classmethod
    def _query(cls, v: Any) -> Any:
        if isinstance(v, dict) and isinstance(v.get("text"), str):  # {"text": ...} query objects
            return v["text"]
        return v

    @field_validator("documents")
    @classmethod
    def _documents(cls, v: list[Any]) -> list[str]:
        return [_doc_text(d, i) for i, d in enumerate(v)]


class RerankPayload(BaseModel):
    """What the gateway sends a worker for the ``rerank`` capability."""

    model_config = ConfigDict(extra="forbid")

    query: str
    documents: list[str] = Field(max_length=RERANK_LIMITS.max_documents)
    top_n: int | None = Field(default=None, ge=0)
    return_documents: bool = True
    max_tokens_per_doc: int | None = Field(default=None, ge=1)


RERANK = declare_capability("rerank", RerankPayload, kinds=("rerank",))
declare_kind(
    Kind(
        name="rerank",
        label="rerank",
        default_engine="sentence_transformers",
        description="cross-encoder reranking (/v1/rerank)",
        legacy_names=("reranker",),
    )
)


def rerank_payload(body: RerankRequest, *, default_return_documents: bool) -> RerankPayload:
    rd = body.return_documents if body.return_documents is not None else default_return_documents
    return RerankPayload(
        query=body.query,
        documents=body.documents,
        top_n=body.top_n,
        return_documents=rd,
        max_tokens_per_doc=body.max_tokens_per_doc,
    )
