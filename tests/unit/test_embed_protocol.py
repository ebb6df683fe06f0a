"""Pure pieces of embeddings / rerank / moderation: input shapes, dimensions, sorting, categories."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from pydantic import ValidationError

from gpt_server.backends.text_tasks.results import (
    check_dimensions,
    embedding_response,
    fit_dimensions,
    label_categories,
    moderation_result,
    rerank_response,
)
from gpt_server.config import ConfigError, parse_config
from gpt_server.errors import BadRequestError
from gpt_server.protocol.embeddings import EmbeddingRequest
from gpt_server.protocol.moderation import OPENAI_CATEGORIES, ModerationRequest
from gpt_server.protocol.rerank import RerankRequest


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("hi", ["hi"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
        (["a", [4, 5]], ["a", [4, 5]]),
    ],
)
def test_embedding_input_shapes(raw: object, want: list) -> None:
    assert EmbeddingRequest(model="m", input=raw).input == want


@pytest.mark.parametrize("raw", [[], "", [""], [[]], [1.5], [True], [[-1]], {"a": 1}, ["a", 3]])
def test_embedding_bad_inputs_are_rejected(raw: object) -> None:
    with pytest.raises(ValidationError):
        EmbeddingRequest(model="m", input=raw)


def test_dimensions_rules() -> None:
    assert check_dimensions(None, 384, None) is None
    assert check_dimensions(384, 384, None) is None
    assert check_dimensions(128, 384, [128, 256]) == 128
    for dims, allowed in ((128, None), (100, [128]), (512, [128])):
        with pytest.raises(BadRequestError) as e:
            check_dimensions(dims, 384, allowed)
        assert e.value.param == "dimensions"


def test_fit_dimensions_truncates_and_renormalises() -> None:
    v = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    out = fit_dimensions(v, 4)
    assert out.shape == (3, 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[0], v[0, :4] / np.linalg.norm(v[0, :4]), rtol=1e-5)


def test_base64_is_little_endian_float32_of_the_float_answer() -> None:
    v = np.random.default_rng(1).normal(size=(2, 8)).astype(np.float32)
    f = embedding_response(v, [3, 4], "float")
    b = embedding_response(v, [3, 4], "base64")
    assert f["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    for fd, bd in zip(f["data"], b["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(bd["embedding"]), dtype="<f4")
        assert decoded.tolist() == fd["embedding"]


def test_rerank_documents_shapes_and_sorting() -> None:
    req = RerankRequest(
        model="m", query={"text": "q"}, documents=["a", {"text": "b"}, {"content": [{"type": "text", "text": "c"}]}]
    )
    assert req.query == "q" and req.documents == ["a", "b", "c"]
    out = rerank_response([0.1, 0.9, 0.5], req.documents, top_n=2, return_documents=True, tokens=9)
    assert [r["index"] for r in out["results"]] == [1, 2]
    assert out["results"][0]["document"] == {"text": "b"}
    out = rerank_response([0.3, 0.3], ["x", "y"], top_n=None, return_documents=False, tokens=1)
    assert [r["index"] for r in out["results"]] == [0, 1] and "document" not in out["results"][0]
    with pytest.raises(ValidationError):
        RerankRequest(model="m", query="q", documents=[{"content": [{"type": "image_url"}]}])


def test_label_categories_map_to_openai_names() -> None:
    labels = ["toxic", "Identity_Hate", "threat", "SAFE", "sexual_explicit", "spam"]
    assert label_categories(labels) == ["harassment", "hate", "harassment/threatening", "none", "sexual", "spam"]
    assert label_categories(["spam", "safe"], {"spam": "illicit", "safe": "none"}) == ["illicit", "none"]


def test_moderation_result_flags_against_the_threshold() -> None:
    cats = label_categories(["toxic", "insult", "safe"])
    r = moderation_result([0.2, 0.6, 0.2], cats, threshold=0.5)
    assert r["flagged"] and r["categories"]["harassment"]
    assert r["category_scores"]["harassment"] == pytest.approx(0.6)
    assert set(OPENAI_CATEGORIES) <= set(r["categories"])
    assert not moderation_result([0.2, 0.6, 0.2], cats, threshold=0.7)["flagged"]
    safe_only = moderation_result([0.0, 0.0, 1.0], cats, threshold=0.5)
    assert not safe_only["flagged"]
    assert ModerationRequest(input="x").input == ["x"]


def test_config_keys_are_typed_and_bounded() -> None:
    base = {"model_name_or_path": "/nonexistent-but-unchecked"}

    def cfg(**mc: object) -> dict:
        return {"models": [{"e": {"model_config": {**base, **mc}, "model_type": "embedding", "enable": False}}]}

    parse_config(cfg(max_batch_size=64, batch_wait_ms=2, matryoshka_dims=[64, 128], moderation_threshold=0.3))
    for bad in ({"max_batch_size": 0}, {"batch_wait_ms": -1}, {"matryoshka_dims": [0]}, {"moderation_threshold": 2}):
        with pytest.raises(ConfigError):
            parse_config(cfg(**bad))
