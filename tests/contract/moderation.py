"""The moderation suite (kind ``moderation``: moderate + classify) on a text classifier whose
labels are ``LABELS`` (toxic and insult fold into OpenAI's ``harassment``)."""

from __future__ import annotations

from typing import Any, ClassVar

import httpx
import numpy as np
import openai
import pytest

from tests.contract.base import Suite, covers
from tests.embed_helpers import LABELS
from tests.helpers import Server
from tests.openai_shapes import assert_openai_shape

__all__ = ["ModerationSuite", "TEXTS"]

TEXTS = ["Paris is the capital of France.", "You are an idiot.", "Bananas are rich in potassium.", "A short note."]


class ModerationSuite(Suite):
    """An engine subclass sets ``model`` (a classifier with ``LABELS``) and implements :meth:`reference`."""

    kind = "moderation"
    model: ClassVar[str] = "moderation"
    atol: ClassVar[float] = 1e-5

    def reference(self, texts: list[str]) -> np.ndarray:
        """The classifier's label probabilities (rows: texts, columns: ``LABELS``), without GPT Server."""
        raise NotImplementedError

    def _classify(self, server: Server, **body: Any) -> httpx.Response:
        return httpx.post(f"{server.base_url}/v1/classify", json={"model": self.model, **body}, timeout=60)

    @covers("moderate")
    def test_moderation_scores_follow_the_model(self, client: openai.OpenAI) -> None:
        r = client.moderations.create(model=self.model, input=TEXTS)
        assert r.model == self.model and len(r.results) == len(TEXTS)
        i_toxic, i_insult = LABELS.index("toxic"), LABELS.index("insult")
        for res, probs in zip(r.results, self.reference(TEXTS), strict=True):
            assert res.category_scores.harassment == pytest.approx(max(probs[i_toxic], probs[i_insult]), abs=self.atol)
            assert res.category_scores.hate == 0.0  # no label of this model maps to hate
            assert not res.categories.hate

    @covers("moderate")
    def test_responses_match_the_openai_schema(self, server: Server) -> None:
        r = httpx.post(f"{server.base_url}/v1/moderations", json={"model": self.model, "input": TEXTS}, headers=server.headers(), timeout=60)
        assert r.status_code == 200, r.text
        assert_openai_shape("CreateModerationResponse", r.json())

    @covers("moderate")
    def test_threshold_decides_flagged(self, server: Server) -> None:
        url = f"{server.base_url}/v1/moderations"
        high = httpx.post(url, json={"model": self.model, "input": TEXTS, "threshold": 1.0}, timeout=60).json()
        assert not any(x["flagged"] for x in high["results"])
        scores = [x["category_scores"]["harassment"] for x in high["results"]]
        mid = sorted(scores)[len(scores) // 2]
        half = httpx.post(url, json={"model": self.model, "input": TEXTS, "threshold": mid}, timeout=60).json()
        assert [x["flagged"] for x in half["results"]] == [s >= mid for s in scores]
        assert [x["categories"]["harassment"] for x in half["results"]] == [s >= mid for s in scores]
        one = httpx.post(url, json={"model": self.model, "input": TEXTS[0], "threshold": 0.0}, timeout=60).json()
        assert len(one["results"]) == 1 and one["results"][0]["flagged"]

    @covers("classify")
    def test_classify_returns_the_label_probabilities(self, server: Server) -> None:
        r = self._classify(server, input=TEXTS).json()
        assert r["object"] == "list" and len(r["data"]) == len(TEXTS) and r["usage"]["prompt_tokens"] > len(TEXTS)
        for item, probs in zip(r["data"], self.reference(TEXTS), strict=True):
            assert list(item["scores"]) == LABELS and item["num_classes"] == len(LABELS)
            np.testing.assert_allclose(item["probs"], probs, atol=self.atol)
            assert sum(item["probs"]) == pytest.approx(1.0, abs=1e-4)
            assert item["label"] == LABELS[int(np.argmax(probs))]
        single = self._classify(server, input=TEXTS[1]).json()
        assert len(single["data"]) == 1
        np.testing.assert_allclose(single["data"][0]["probs"], r["data"][1]["probs"], atol=self.atol)

    @covers("moderate", "classify")
    @pytest.mark.parametrize(
        ("route", "body", "param"),
        [
            ("moderations", {"input": []}, "input"),
            ("moderations", {"input": "x", "threshold": 1.5}, "threshold"),
            ("moderations", {}, "input"),
            ("classify", {"input": []}, "input"),
            ("classify", {"input": [3]}, "input"),
        ],
    )
    def test_bad_requests_are_400_with_param(self, server: Server, route: str, body: dict[str, Any], param: str) -> None:
        r = httpx.post(f"{server.base_url}/v1/{route}", json={"model": self.model, **body}, timeout=60)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param

    @covers("moderate")
    def test_a_classifier_does_not_embed(self, server: Server) -> None:
        r = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": self.model, "input": "x"}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
