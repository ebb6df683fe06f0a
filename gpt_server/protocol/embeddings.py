"""Embeddings: the OpenAI wire schema, the internal worker payload, and the result shape.

``POST /v1/embeddings`` accepts ``input`` as a string, a list of strings, a list of token
ids or a list of token-id lists. The worker answers the final OpenAI body (the gateway
only stamps ``model``): vectors as float lists, or as base64 of little-endian float32
(what the openai SDK asks for by default and decodes with ``numpy.frombuffer``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .kinds import Kind, declare_capability, declare_kind
from .openai import ModelName, OpenAIBaseModel

__all__ = [
    "EMBED_LIMITS",
    "EmbeddingInput",
    "EmbeddingRequest",
    "EmbedPayload",
    "EMBED",
    "embed_payload",
]


class _EmbedLimits:
    max_inputs = 2048  # OpenAI's limit on inputs per request
    max_text_chars = 1_000_000
    max_token_ids = 131_072
    max_dimensions = 65_536


EMBED_LIMITS = _EmbedLimits()

EmbeddingInput = str | list[int]


def _check_ids(ids: list[Any], where: str) -> list[int]:
    if not ids:
        raise ValueError(f"{where} is an empty token list")
    if len(ids) > EMBED_LIMITS.max_token_ids:
        raise ValueError(f"{where} has more than {EMBED_LIMITS.max_token_ids} tokens")
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError(f"{where} must hold non-negative integer token ids")
    return ids


def _check_text(s: str, where: str) -> str:
    if not s:
        raise ValueError(f"{where} is an empty string")
    if len(s) > EMBED_LIMITS.max_text_chars:
        raise ValueError(f"{where} is longer than {EMBED_LIMITS.max_text_chars} characters")
    return s


def normalise_input(v: Any) -> list[EmbeddingInput]:
    """string | [string] | [int] | [[int]] → a list of inputs (strings or id lists)."""
    if isinstance(v, str):
        return [_check_text(v, "input")]
    if not isinstance(v, list):
        raise ValueError("must be a string, a list of strings, a list of token ids or a list of token-id lists")
    if not v:
        raise ValueError("must not be empty")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return [_check_ids(v, "input")]
    if len(v) > EMBED_LIMITS.max_inputs:
        raise ValueError(f"holds more than {EMBED_LIMITS.max_inputs} inputs")
    out: list[EmbeddingInput] = []
    for i, x in enumerate(v):
        if isinstance(x, str):
            out.append(_check_text(x, f"input[{i}]"))
        elif isinstance(x, list):
            out.append(_check_ids(x, f"input[{i}]"))
        else:
            raise ValueError(f"input[{i}] must be a string or a list of token ids")
    return out


class EmbeddingRequest(OpenAIBaseModel):
    model: ModelName = ""
    input: Any
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=EMBED_LIMITS.max_dimensions)
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input")
    @classmethod
    def _input(cls, v: Any) -> list[EmbeddingInput]:
        return normalise_input(v)


class EmbedPayload(BaseModel):
    """What the gateway sends a worker for the ``embed`` capability."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[EmbeddingInput] = Field(min_length=1, max_length=EMBED_LIMITS.max_inputs)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=EMBED_LIMITS.max_dimensions)


EMBED = declare_capability("embed", EmbedPayload, kinds=("embedding",))
declare_kind(
    Kind(
        name="embedding",
        label="embeddings",
        default_engine="sentence_transformers",
        description="text embeddings (/v1/embeddings)",
        legacy_names=("embeddings",),
        legacy_engines={"embedding_infinity": "infinity", "embedding_sentence_transformers": "sentence_transformers"},
    )
)


def embed_payload(body: EmbeddingRequest) -> EmbedPayload:
    return EmbedPayload(inputs=body.input, encoding_format=body.encoding_format, dimensions=body.dimensions)
