"""The embedding suite (kind ``embedding``: embed), through a real server and the openai SDK."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import httpx
import numpy as np
import openai
import pytest

from tests.contract.base import Suite, covers
from tests.helpers import Server
from tests.openai_shapes import assert_openai_shape

__all__ = ["EmbedSuite", "TEXTS", "vectors"]

TEXTS = [
    "The cat sits on the mat.",
    "A cat is sitting on a mat.",
    "Quarterly revenue grew by twelve percent.",
    "The company's sales rose 12% this quarter.",
    "How do I bake sourdough bread?",
]


def vectors_of(b64: str) -> list[float]:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4").tolist()


def vectors(resp: Any) -> np.ndarray:
    return np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], dtype=np.float32)


class EmbedSuite(Suite):
    """An engine subclass sets ``model`` and ``dims`` and implements :meth:`reference`."""

    kind = "embedding"
    model: ClassVar[str] = "embed"
    dims: ClassVar[int]
    atol: ClassVar[float] = 2e-5  # against the reference vectors
    batch_atol: ClassVar[float] = 1e-5  # a text's vector alone vs within a batch

    def reference(self, texts: list[str]) -> np.ndarray:
        """The same model's vectors for ``texts``, computed without GPT Server."""
        raise NotImplementedError

    @covers("embed")
    def test_float_and_base64_agree_and_match_the_model(self, client: openai.OpenAI) -> None:
        b64 = client.embeddings.create(model=self.model, input=TEXTS)  # the SDK asks for base64
        flt = client.embeddings.create(model=self.model, input=TEXTS, encoding_format="float")
        assert b64.model == self.model and b64.object == "list"
        a, b = vectors(b64), vectors(flt)
        assert a.shape == (len(TEXTS), self.dims)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, self.reference(TEXTS), atol=self.atol)

    @covers("embed")
    def test_responses_match_the_openai_schema(self, server: Server) -> None:
        for fmt in ("float", "base64"):
            r = httpx.post(
                f"{server.base_url}/v1/embeddings", json={"model": self.model, "input": TEXTS[:2], "encoding_format": fmt},
                headers=server.headers(), timeout=60,
            )
            assert r.status_code == 200, r.text
            body = r.json()
            if fmt == "base64":  # the schema knows only float lists; OpenAI itself sends a string here
                assert all(isinstance(d["embedding"], str) for d in body["data"])
                body["data"] = [{**d, "embedding": vectors_of(d["embedding"])} for d in body["data"]]
            assert_openai_shape("CreateEmbeddingResponse", body)
        bad = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": self.model, "input": []}, headers=server.headers(), timeout=60)
        assert bad.status_code == 400
        assert_openai_shape("ErrorResponse", bad.json())

    @covers("embed")
    def test_raw_base64_is_float32_little_endian(self, server: Server, client: openai.OpenAI) -> None:
        r = httpx.post(
            f"{server.base_url}/v1/embeddings",
            json={"model": self.model, "input": "hello", "encoding_format": "base64"},
            timeout=60,
        ).json()
        vec = np.frombuffer(base64.b64decode(r["data"][0]["embedding"]), dtype="<f4")
        assert vec.shape == (self.dims,)
        want = vectors(client.embeddings.create(model=self.model, input="hello", encoding_format="float"))[0]
        np.testing.assert_array_equal(vec, want)

    @covers("embed")
    def test_order_kept_and_usage_counted(self, client: openai.OpenAI) -> None:
        r = client.embeddings.create(model=self.model, input=TEXTS)
        assert r.usage.prompt_tokens == r.usage.total_tokens > len(TEXTS)
        singles = [client.embeddings.create(model=self.model, input=t).usage.prompt_tokens for t in TEXTS[:2]]
        pair = client.embeddings.create(model=self.model, input=TEXTS[:2]).usage.prompt_tokens
        assert all(n > 0 for n in singles) and pair == sum(singles)
        rev = client.embeddings.create(model=self.model, input=TEXTS[::-1])
        assert [d.index for d in rev.data] == list(range(len(TEXTS)))
        np.testing.assert_allclose(vectors(rev), vectors(r)[::-1], atol=self.batch_atol)

    @covers("embed")
    def test_paraphrases_are_closer_than_unrelated_pairs(self, client: openai.OpenAI) -> None:
        v = vectors(client.embeddings.create(model=self.model, input=TEXTS))
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        sim = v @ v.T
        for para in (sim[0, 1], sim[2, 3]):
            assert para > max(sim[0, 2], sim[0, 4], sim[1, 3], sim[2, 4], sim[3, 4])

    @covers("embed")
    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"input": []}, "input"),
            ({"input": ""}, "input"),
            ({"input": ["a", 3]}, "input"),
            ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
            ({"input": "x", "dimensions": 0}, "dimensions"),
            ({}, "input"),
        ],
    )
    def test_bad_requests_are_400_with_param(self, server: Server, body: dict[str, Any], param: str) -> None:
        r = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": self.model, **body}, timeout=60)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error"

    @covers("embed")
    def test_an_embedding_model_does_not_chat(self, client: openai.OpenAI) -> None:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": "hi"}])
        assert e.value.body["param"] == "model"
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model=f"{self.model}-no-such-model", input="x")

    @covers("embed")
    def test_concurrent_requests_do_not_mix_results(self, client: openai.OpenAI) -> None:
        solo = {t: vectors(client.embeddings.create(model=self.model, input=t))[0] for t in TEXTS}
        jobs = [TEXTS[i % len(TEXTS)] for i in range(20)]

        def one(t: str) -> tuple[str, np.ndarray]:
            return t, vectors(client.embeddings.create(model=self.model, input=[t, t]))

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(one, jobs))
        for text, vecs in got:
            assert vecs.shape == (2, self.dims)
            np.testing.assert_allclose(vecs[0], solo[text], atol=self.batch_atol)
            np.testing.assert_allclose(vecs[1], solo[text], atol=self.batch_atol)
