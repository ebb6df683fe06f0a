"""Rerank (cohere SDK v1/v2, Dify's client shape) and moderation / classify through the real
server. Tiny random transformers models are built in a temp dir and loaded through the
config path; moderation flags are also proven on the real alt-profanity-check model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cohere
import httpx
import numpy as np
import openai
import pytest

from tests.embed_helpers import LABELS, PROFANITY, build_classifier, build_cross_encoder, entry
from tests.helpers import Server, base_config, served

QUERY = "what is the capital of france"
DOCS = [
    "Paris is the capital of France.",
    "Bananas are rich in potassium.",
    "The Eiffel Tower stands in Paris.",
    "Berlin is the capital of Germany.",
    "A short note.",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tiny")
    return {"ce": build_cross_encoder(tmp / "ce"), "clf": build_classifier(tmp / "clf")}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("rerank")
    cfg = base_config(
        models=[
            entry("tiny-rerank", str(models["ce"]), "rerank", alias="rerank-v3.5"),
            entry("tiny-mod", str(models["clf"]), "moderation", moderation_threshold=0.0),
            entry("profanity", PROFANITY, "moderation", class_labels=["clean", "profanity"]),
        ]
    )
    with served(cfg, tmp, "rerank_moderation", 3) as srv:
        yield srv


@pytest.fixture(scope="module")
def ref_scores(models: dict[str, Path]) -> list[float]:
    """The cross-encoder called directly in process."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(1)
    ce = CrossEncoder(str(models["ce"]), device="cpu")
    return [float(s) for s in ce.predict([[QUERY, d] for d in DOCS])]


@pytest.fixture(scope="module")
def ref_probs(models: dict[str, Path]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models["clf"])
    m = AutoModelForSequenceClassification.from_pretrained(models["clf"]).eval()
    with torch.inference_mode():
        logits = m(**tok(DOCS, padding=True, return_tensors="pt")).logits
    return torch.softmax(logits, -1).numpy()


def test_cohere_v1_sdk_rerank(server: Server, ref_scores: list[float]) -> None:
    co = cohere.Client(base_url=server.base_url, api_key="none")
    r = co.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=3, return_documents=True)
    want = sorted(range(len(DOCS)), key=lambda i: -ref_scores[i])[:3]
    assert [x.index for x in r.results] == want
    for x in r.results:
        assert x.relevance_score == pytest.approx(ref_scores[x.index], abs=1e-5)
        assert x.document.text == DOCS[x.index]
    scores = [x.relevance_score for x in r.results]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert r.meta.billed_units.search_units == 1 and r.meta.tokens.input_tokens > len(DOCS) * 5


def test_cohere_v2_sdk_rerank(server: Server, ref_scores: list[float]) -> None:
    co = cohere.ClientV2(base_url=server.base_url, api_key="none")
    r = co.rerank(model="tiny-rerank", query=QUERY, documents=DOCS)
    assert sorted(x.index for x in r.results) == list(range(len(DOCS)))
    assert [x.index for x in r.results] == sorted(range(len(DOCS)), key=lambda i: -ref_scores[i])


def test_dify_rerank_client_shape(server: Server, ref_scores: list[float]) -> None:
    """What Dify's OpenAI-API-compatible rerank provider posts and reads."""
    endpoint_url = f"{server.base_url}/v1"
    payload = {"model": "tiny-rerank", "query": QUERY, "documents": DOCS, "top_n": 2}
    r = httpx.post(f"{endpoint_url}/rerank", json=payload, headers={"Authorization": ""}, timeout=30)
    r.raise_for_status()
    docs = [(item["index"], item["relevance_score"]) for item in r.json()["results"] if item["index"] < len(DOCS)]
    assert len(docs) == 2
    assert docs[0][0] == max(range(len(DOCS)), key=lambda i: ref_scores[i])
    zero = httpx.post(f"{endpoint_url}/rerank", json={**payload, "top_n": 0}, timeout=30).json()
    assert zero["results"] == []


def test_plain_rerank_route_text_objects_and_no_documents(server: Server) -> None:
    body = {"model": "tiny-rerank", "query": QUERY, "documents": [{"text": d} for d in DOCS], "return_documents": False}
    r = httpx.post(f"{server.base_url}/rerank", json=body, timeout=30).json()
    assert len(r["results"]) == len(DOCS) and all("document" not in x for x in r["results"])
    assert r["usage"]["total_tokens"] == r["meta"]["tokens"]["input_tokens"] > 0
    empty = httpx.post(f"{server.base_url}/v1/rerank", json={**body, "documents": []}, timeout=30).json()
    assert empty["results"] == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"documents": ["d"]}, "query"),
        ({"query": "q"}, "documents"),
        ({"query": "q", "documents": "d"}, "documents"),
        ({"query": "q", "documents": [3]}, "documents"),
        ({"query": "q", "documents": ["d"], "top_n": -1}, "top_n"),
    ],
)
def test_rerank_bad_requests_are_400_with_param(server: Server, body: dict, param: str) -> None:
    r = httpx.post(f"{server.base_url}/v1/rerank", json={"model": "tiny-rerank", **body}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_moderation_scores_match_the_model_and_map_categories(server: Server, ref_probs: np.ndarray) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    r = client.moderations.create(model="tiny-mod", input=DOCS)
    assert len(r.results) == len(DOCS)
    i_toxic, i_insult = LABELS.index("toxic"), LABELS.index("insult")
    for res, probs in zip(r.results, ref_probs, strict=True):
        # toxic and insult both fold into harassment; 'safe' is benign
        assert res.category_scores.harassment == pytest.approx(max(probs[i_toxic], probs[i_insult]), abs=1e-5)
        assert res.category_scores.hate == 0.0
        assert res.flagged and res.categories.harassment  # config threshold 0.0


def test_moderation_threshold_request_override(server: Server) -> None:
    url = f"{server.base_url}/v1/moderations"
    hi = httpx.post(url, json={"model": "tiny-mod", "input": DOCS, "threshold": 1.0}, timeout=30).json()
    assert not any(x["flagged"] for x in hi["results"])
    scores = [x["category_scores"]["harassment"] for x in hi["results"]]
    mid = sorted(scores)[len(scores) // 2]
    half = httpx.post(url, json={"model": "tiny-mod", "input": DOCS, "threshold": mid}, timeout=30).json()
    assert [x["flagged"] for x in half["results"]] == [s >= mid for s in scores]
    bad = httpx.post(url, json={"model": "tiny-mod", "input": "x", "threshold": 1.5}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "threshold"


def test_real_profanity_model_flags_insults_only(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    r = client.moderations.create(
        model="profanity", input=["you are a stupid fucking idiot", "Have a lovely day at the park."]
    )
    insult, benign = r.results
    assert insult.flagged and insult.categories.harassment and insult.category_scores.harassment > 0.9
    assert not benign.flagged and benign.category_scores.harassment < 0.2


def test_classify_returns_raw_label_scores(server: Server, ref_probs: np.ndarray) -> None:
    r = httpx.post(f"{server.base_url}/v1/classify", json={"model": "tiny-mod", "input": DOCS}, timeout=30).json()
    assert r["object"] == "list" and len(r["data"]) == len(DOCS) and r["usage"]["prompt_tokens"] > 0
    for item, probs in zip(r["data"], ref_probs, strict=True):
        assert list(item["scores"]) == LABELS and item["num_classes"] == 3
        np.testing.assert_allclose(item["probs"], probs, atol=1e-5)
        assert item["label"] == LABELS[int(np.argmax(probs))]


def test_moderation_without_model_and_capability_errors(server: Server) -> None:
    r = httpx.post(f"{server.base_url}/v1/moderations", json={"input": "hello"}, timeout=30)
    err = r.json()["error"]  # two moderation models, none marked default: the client must choose
    assert r.status_code == 400 and err["param"] == "model" and err["code"] == "model_required"
    assert "profanity" in err["message"] and "tiny-mod" in err["message"]
    r = httpx.post(f"{server.base_url}/v1/moderations", json={"model": "tiny-rerank", "input": "x"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.post(f"{server.base_url}/v1/moderations", json={"model": "tiny-mod", "input": []}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
