"""The rerank suite (kind ``rerank``), through a real server: the cohere SDK and plain HTTP."""

from __future__ import annotations

from typing import Any, ClassVar

import cohere
import httpx
import pytest

from tests.contract.base import Suite, covers
from tests.helpers import Server

__all__ = ["RerankSuite", "QUERY", "DOCS"]

QUERY = "what is the capital of france"
DOCS = [
    "Paris is the capital of France.",
    "Bananas are rich in potassium.",
    "The Eiffel Tower stands in Paris.",
    "Berlin is the capital of Germany.",
    "A short note.",
]


class RerankSuite(Suite):
    """An engine subclass sets ``model`` and implements :meth:`reference`."""

    kind = "rerank"
    model: ClassVar[str] = "rerank"
    atol: ClassVar[float] = 1e-5

    def reference(self, query: str, documents: list[str]) -> list[float]:
        """The same model's relevance scores, computed without GPT Server."""
        raise NotImplementedError

    def _post(self, server: Server, **body: Any) -> httpx.Response:
        return httpx.post(f"{server.base_url}/v1/rerank", json={"model": self.model, **body}, timeout=60)

    @covers("rerank")
    def test_cohere_sdk_scores_match_the_model_in_order(self, server: Server) -> None:
        want = self.reference(QUERY, DOCS)
        r = cohere.ClientV2(base_url=server.base_url, api_key="none").rerank(model=self.model, query=QUERY, documents=DOCS)
        assert [x.index for x in r.results] == sorted(range(len(DOCS)), key=lambda i: -want[i])
        for x in r.results:
            assert x.relevance_score == pytest.approx(want[x.index], abs=self.atol)

    @covers("rerank")
    def test_top_n_and_returned_documents(self, server: Server) -> None:
        full = self._post(server, query=QUERY, documents=DOCS).json()["results"]
        top = self._post(server, query=QUERY, documents=DOCS, top_n=2, return_documents=True).json()["results"]
        assert [x["index"] for x in top] == [x["index"] for x in full[:2]]
        assert [x["document"]["text"] for x in top] == [DOCS[x["index"]] for x in top]
        scores = [x["relevance_score"] for x in full]
        assert scores == sorted(scores, reverse=True)
        assert self._post(server, query=QUERY, documents=DOCS, top_n=0).json()["results"] == []

    @covers("rerank")
    def test_scores_do_not_depend_on_document_order(self, server: Server) -> None:
        fwd = {x["index"]: x["relevance_score"] for x in self._post(server, query=QUERY, documents=DOCS).json()["results"]}
        rev = self._post(server, query=QUERY, documents=DOCS[::-1]).json()["results"]
        for x in rev:
            assert x["relevance_score"] == pytest.approx(fwd[len(DOCS) - 1 - x["index"]], abs=1e-5)

    @covers("rerank")
    def test_text_objects_usage_and_empty_list(self, server: Server) -> None:
        r = self._post(server, query=QUERY, documents=[{"text": d} for d in DOCS], return_documents=False).json()
        assert sorted(x["index"] for x in r["results"]) == list(range(len(DOCS)))
        assert all("document" not in x for x in r["results"])
        assert r["usage"]["total_tokens"] == r["meta"]["tokens"]["input_tokens"] > len(DOCS) * 5
        assert self._post(server, query=QUERY, documents=[]).json()["results"] == []

    @covers("rerank")
    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"documents": ["d"]}, "query"),
            ({"query": "q"}, "documents"),
            ({"query": "q", "documents": [3]}, "documents"),
            ({"query": "q", "documents": ["d"], "top_n": -1}, "top_n"),
        ],
    )
    def test_bad_requests_are_400_with_param(self, server: Server, body: dict[str, Any], param: str) -> None:
        r = self._post(server, **body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param

    @covers("rerank")
    def test_a_reranker_does_not_embed(self, server: Server) -> None:
        r = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": self.model, "input": "x"}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
