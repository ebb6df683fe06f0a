"""Result bodies of the text tasks: embeddings (dimensions, base64), rerank order, moderation
categories and classification scores, built from what an engine computed."""

from __future__ import annotations

import base64
import re
from typing import Any

import numpy as np

from ...errors import BadRequestError
from ...protocol.moderation import BENIGN, OPENAI_CATEGORIES

__all__ = [
    "check_dimensions",
    "fit_dimensions",
    "encode_vector",
    "embedding_response",
    "rerank_response",
    "label_categories",
    "moderation_result",
    "classify_result",
]


def check_dimensions(dimensions: int | None, full: int, allowed: list[int] | None) -> int | None:
    """The size to truncate to (None = full size); 400 where the model does not allow it.

    ``allowed`` is the list of Matryoshka sizes the model was trained for (from its
    config); a model without it only accepts its full size.
    """
    if dimensions is None or dimensions == full:
        return None
    if dimensions > full:
        raise BadRequestError(
            f"dimensions={dimensions} is larger than this model's embedding size ({full})", param="dimensions"
        )
    if not allowed:
        raise BadRequestError(
            f"this model does not support shortened embeddings; omit dimensions or use {full}",
            param="dimensions",
            code="unsupported_dimensions",
        )
    if dimensions not in allowed:
        sizes = ", ".join(str(d) for d in sorted({*allowed, full}))
        raise BadRequestError(
            f"dimensions={dimensions} is not supported by this model (supported: {sizes})",
            param="dimensions",
            code="unsupported_dimensions",
        )
    return dimensions


def fit_dimensions(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Truncate to the first ``dimensions`` values and L2-renormalise (Matryoshka)."""
    if dimensions is None:
        return vectors
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.maximum(norms, 1e-12)


def encode_vector(vec: np.ndarray, encoding_format: str) -> list[float] | str:
    v = np.ascontiguousarray(vec, dtype="<f4")
    if encoding_format == "base64":
        return base64.b64encode(v.tobytes()).decode("ascii")
    return v.tolist()


def embedding_response(vectors: np.ndarray, token_counts: list[int], encoding_format: str) -> dict[str, Any]:
    """The OpenAI body, without ``model`` (the gateway stamps the name the client used)."""
    tokens = int(sum(token_counts))
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(vec, encoding_format)}
            for i, vec in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def rerank_response(
    scores: list[float], documents: list[str], *, top_n: int | None, return_documents: bool, tokens: int
) -> dict[str, Any]:
    """Results sorted by score (ties keep input order), cut to ``top_n``; Cohere meta + usage."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if top_n is not None:
        order = order[:top_n]
    results = []
    for i in order:
        r: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
        if return_documents:
            r["document"] = {"text": documents[i]}
        results.append(r)
    return {
        "results": results,
        "meta": {
            "api_version": {"version": "2"},
            "billed_units": {"search_units": 1, "input_tokens": tokens},
            "tokens": {"input_tokens": tokens, "output_tokens": 0},
        },
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


_ALIASES: dict[str, str] = {
    **{c.replace("/", "_").replace("-", "_"): c for c in OPENAI_CATEGORIES},
    **dict.fromkeys(
        ("insult", "insults", "toxic", "toxicity", "severe_toxic", "severe_toxicity", "abuse", "abusive",
         "offensive", "profanity", "profane", "obscene", "bullying", "harassing", "harmful", "unsafe"),
        "harassment",
    ),
    **dict.fromkeys(("threat", "threats", "threatening", "intimidation"), "harassment/threatening"),
    **dict.fromkeys(("identity_hate", "identity_attack", "hateful", "hate_speech", "racism", "sexism"), "hate"),
    **dict.fromkeys(("suicide", "selfharm", "self_injury"), "self-harm"),
    **dict.fromkeys(("sexual_explicit", "sexually_explicit", "nsfw", "porn", "explicit", "nudity"), "sexual"),
    **dict.fromkeys(("sexual_minor", "csam", "child_abuse"), "sexual/minors"),
    **dict.fromkeys(("violent", "gore", "graphic_violence"), "violence"),
    **dict.fromkeys(("illegal", "drugs", "weapons", "crime", "criminal"), "illicit"),
    **dict.fromkeys(
        ("safe", "neutral", "normal", "ok", "clean", "benign", "none", "non_toxic", "nontoxic", "not_toxic",
         "sfw", "appropriate", "acceptable", "no_hate", "not_offensive", "non_offensive"),
        BENIGN,
    ),
}


def _norm(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def label_categories(labels: list[str], overrides: dict[str, str] | None = None) -> list[str]:
    """The category each label reports under: an OpenAI category, ``none`` (benign) or itself."""
    ov = {_norm(k): v for k, v in (overrides or {}).items()}
    out = []
    for label in labels:
        key = _norm(label)
        if key in ov:
            out.append(ov[key])
        else:
            out.append(_ALIASES.get(key, label))
    return out


def moderation_result(scores: list[float], categories: list[str], threshold: float) -> dict[str, Any]:
    """One OpenAI moderation result from one input's label scores."""
    cat_scores: dict[str, float] = dict.fromkeys(OPENAI_CATEGORIES, 0.0)
    for score, cat in zip(scores, categories, strict=True):
        if cat == BENIGN:
            continue
        cat_scores[cat] = max(cat_scores.get(cat, 0.0), float(score))
    flags = {cat: s >= threshold and s > 0.0 for cat, s in cat_scores.items()}
    return {
        "flagged": any(flags.values()),
        "categories": flags,
        "category_scores": cat_scores,
        "category_applied_input_types": {cat: ["text"] for cat in cat_scores},
    }


def classify_result(index: int, scores: list[float], labels: list[str]) -> dict[str, Any]:
    best = max(range(len(scores)), key=lambda i: scores[i])
    return {
        "index": index,
        "label": labels[best],
        "probs": [float(s) for s in scores],
        "num_classes": len(labels),
        "scores": {lab: float(s) for lab, s in zip(labels, scores, strict=True)},
    }
