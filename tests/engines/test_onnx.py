"""work_mode: onnx — the packaged all-MiniLM-L6-v2 on ONNX Runtime, exported once from its
weights (cached beside the other test models), against sentence-transformers' own vectors; and
its int8 copy (``quantize: int8``) served beside it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pydantic
import pytest

from bench.prompts import VARIED_SENTENCES
from tests.contract.embed import TEXTS, EmbedSuite, vectors
from tests.embed_helpers import MINILM, entry, minilm_vectors
from tests.hf_helpers import CACHE_ROOT

ONNX_CACHE = CACHE_ROOT / "onnx"
INT8 = "embed-int8"
# one or two words: activations quantised per tensor cost these most (cosine ~0.98, see docs/embeddings.md)
ONE_WORD_TEXTS = ["ok", "hello", "Paris", "thanks a lot"]
# a fixed set of sentences: short and long, paraphrases, numbers, code, non-English
QUALITY_TEXTS = [*TEXTS, *VARIED_SENTENCES]


class TestOnnxEmbed(EmbedSuite):
    dims = 384
    atol = 1e-5  # ONNX Runtime's kernels against torch's

    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        yield [
            entry(cls.model, MINILM, "embedding", work_mode="onnx", onnx_cache_dir=str(ONNX_CACHE), n_threads=2),
            entry(INT8, MINILM, "embedding", work_mode="onnx", onnx_cache_dir=str(ONNX_CACHE), n_threads=1,
                  quantize="int8"),
        ]

    def reference(self, texts: list[str]) -> np.ndarray:
        return minilm_vectors(texts)

    def test_the_export_is_cached_and_matryoshka_is_refused(self, client: openai.OpenAI) -> None:
        exports = list(ONNX_CACHE.glob("*/model.onnx"))
        assert len(exports) >= 1 and all(p.stat().st_size > 10_000_000 for p in exports)
        assert not list(ONNX_CACHE.glob("export-*"))  # no half-written export left behind
        got = vectors(client.embeddings.create(model=self.model, input=TEXTS[:2], encoding_format="float"))
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # the model's Normalize module

    def test_int8_is_quantised_cached_and_close_to_torch(self, client: openai.OpenAI) -> None:
        """``quantize: int8``: a cached int8 copy next to the export, whose vectors stay within
        cosine 0.99 of sentence-transformers' (torch) on the fixed set, yet are not the fp32 ones."""
        copies = list(ONNX_CACHE.glob("int8-*/model.onnx"))
        fp32 = min(p.stat().st_size for p in ONNX_CACHE.glob("*/model.onnx") if not p.parent.name.startswith("int8-"))
        assert copies and all(p.stat().st_size < fp32 * 0.7 for p in copies)  # int8 MatMul weights (the vocabulary stays fp32)
        assert not list(ONNX_CACHE.glob("quantize-*"))  # no half-written copy left behind
        got = vectors(client.embeddings.create(model=INT8, input=QUALITY_TEXTS))
        want = minilm_vectors(QUALITY_TEXTS)
        cos = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert cos.min() >= 0.99, cos
        full = vectors(client.embeddings.create(model=self.model, input=QUALITY_TEXTS))
        assert np.abs(got - full).max() > 1e-3  # the int8 model answered, not the fp32 one
        one = vectors(client.embeddings.create(model=INT8, input=QUALITY_TEXTS[0], encoding_format="float"))[0]
        assert float(one @ want[0] / np.linalg.norm(one) / np.linalg.norm(want[0])) >= 0.99
        short = vectors(client.embeddings.create(model=INT8, input=ONE_WORD_TEXTS))
        ref = minilm_vectors(ONE_WORD_TEXTS)
        cos_short = (short * ref).sum(axis=1) / (np.linalg.norm(short, axis=1) * np.linalg.norm(ref, axis=1))
        assert cos_short.min() >= 0.97, cos_short  # the weak spot (0.962 before smoothing), pinned


def test_quantize_takes_int8_only() -> None:
    from gpt_server.backends.onnx import OnnxOptions

    assert OnnxOptions(model_name_or_path="m").quantize is None  # off by default
    with pytest.raises(pydantic.ValidationError, match="quantize"):
        OnnxOptions(model_name_or_path="m", quantize="int4")
