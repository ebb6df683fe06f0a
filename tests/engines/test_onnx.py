"""work_mode: onnx — the packaged all-MiniLM-L6-v2 on ONNX Runtime, exported once from its
weights (cached beside the other test models), against sentence-transformers' own vectors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import openai

from tests.contract.embed import TEXTS, EmbedSuite, vectors
from tests.embed_helpers import MINILM, entry, minilm_vectors
from tests.hf_helpers import CACHE_ROOT

ONNX_CACHE = CACHE_ROOT / "onnx"


class TestOnnxEmbed(EmbedSuite):
    dims = 384
    atol = 1e-5  # ONNX Runtime's kernels against torch's

    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        yield [entry(cls.model, MINILM, "embedding", work_mode="onnx", onnx_cache_dir=str(ONNX_CACHE), n_threads=2)]

    def reference(self, texts: list[str]) -> np.ndarray:
        return minilm_vectors(texts)

    def test_the_export_is_cached_and_matryoshka_is_refused(self, client: openai.OpenAI) -> None:
        exports = list(ONNX_CACHE.glob("*/model.onnx"))
        assert len(exports) >= 1 and all(p.stat().st_size > 10_000_000 for p in exports)
        assert not list(ONNX_CACHE.glob("export-*"))  # no half-written export left behind
        got = vectors(client.embeddings.create(model=self.model, input=TEXTS[:2], encoding_format="float"))
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # the model's Normalize module
