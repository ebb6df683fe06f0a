"""Moderation and classification: wire schemas, worker payload, label → category mapping.

``POST /v1/moderations`` answers OpenAI's shape: every OpenAI category is present;
a model label is folded into the OpenAI category its name matches (``insult`` →
``harassment``, ``identity_hate`` → ``hate`` …, or the config's
``moderation_label_map``); labels that match none keep their own name. Benign labels
(``safe``, ``neutral``, ``clean`` …) never flag. ``flagged`` is true when any
non-benign score reaches the threshold (config default, ``threshold`` in the request
overrides). ``POST /v1/classify`` returns the raw label scores.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .kinds import Kind, declare_capability, declare_kind
from .openai import ModelName, OpenAIBaseModel

__all__ = [
    "CLASSIFY_LIMITS",
    "OPENAI_CATEGORIES",
    "BENIGN",
    "ModerationRequest",
    "ClassifyRequest",
    "ClassifyPayload",
    "MODERATE",
    "CLASSIFY",
    "classify_payload",
]


class _ClassifyLimits:
    max_inputs = 2048
    max_text_chars = 1_000_000


CLASSIFY_LIMITS = _ClassifyLimits()

OPENAI_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
BENIGN = "none"  # what a benign label maps to

def _inputs(v: Any) -> list[str]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items:
        raise ValueError("must be a string or a non-empty list of strings")
    if len(items) > CLASSIFY_LIMITS.max_inputs:
        raise ValueError(f"holds more than {CLASSIFY_LIMITS.max_inputs} inputs")
    for i, s in enumerate(items):
        if isinstance(s, dict) and s.get("type") == "text" and isinstance(s.get("text"), str):
            items[i] = s = s["text"]  # OpenAI's multi-modal input, text parts
        if not isinstance(s, str):
            raise ValueError(f"input[{i}] must be a string (only text is supported by this server)")
        if len(s) > CLASSIFY_LIMITS.max_text_chars:
            raise ValueError(f"input[{i}] is longer than {CLASSIFY_LIMITS.max_text_chars} characters")
    return items


class ModerationRequest(OpenAIBaseModel):
    model: ModelName = ""
    input: Any
    threshold: float | None = Field(default=None, ge=0.0, le=1.0, description="extension: flag at this score")

    @field_validator("input")
    @classmethod
    def _input(cls, v: Any) -> list[str]:
        return _inputs(v)


class ClassifyRequest(OpenAIBaseModel):
    model: ModelName = ""
    input: Any

    @field_validator("input")
    @classmethod
    def _input(cls, v: Any) -> list[str]:
        return _inputs(v)


class ClassifyPayload(BaseModel):
    """What the gateway sends a worker for ``moderate`` and ``classify``."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(min_length=1, max_length=CLASSIFY_LIMITS.max_inputs)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


MODERATE = declare_capability("moderate", ClassifyPayload, kinds=("moderation",))
CLASSIFY = declare_capability("classify", ClassifyPayload, kinds=("moderation",))
declare_kind(
    Kind(
        name="moderation",
        label="moderation",
        default_engine="sentence_transformers",
        description="moderation and text classification (/v1/moderations, /v1/classify)",
        legacy_names=("classify",),
    )
)


def classify_payload(inputs: list[str], threshold: float | None = None) -> ClassifyPayload:
    return ClassifyPayload(inputs=inputs, threshold=threshold)
