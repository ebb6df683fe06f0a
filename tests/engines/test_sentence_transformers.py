"""work_mode: sentence_transformers — embeddings on the packaged all-MiniLM-L6-v2, rerank and
moderation on tiny random BERT models built here; one server holds all three."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from tests.contract.embed import EmbedSuite
from tests.contract.moderation import ModerationSuite
from tests.contract.rerank import RerankSuite
from tests.embed_helpers import (
    MINILM,
    build_classifier,
    build_cross_encoder,
    classifier_probs,
    cross_encoder_scores,
    entry,
    minilm_vectors,
)
from tests.helpers import Server, base_config, served


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("st-models")
    return {"ce": build_cross_encoder(tmp / "ce"), "clf": build_classifier(tmp / "clf")}


@pytest.fixture(scope="module")
def st_server(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("st")
    models = [
        entry(EmbedSuite.model, MINILM, "embedding"),
        entry(RerankSuite.model, str(tiny["ce"]), "rerank"),
        entry(ModerationSuite.model, str(tiny["clf"]), "moderation"),
    ]
    with served(base_config(models=models), tmp, "contract_sentence_transformers") as srv:
        yield srv


class TestSentenceTransformersEmbed(EmbedSuite):
    dims = 384

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, st_server: Server) -> Server:
        return st_server

    def reference(self, texts: list[str]) -> np.ndarray:
        return minilm_vectors(texts)


class TestSentenceTransformersRerank(RerankSuite):
    model_dir: ClassVar[Path]

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, st_server: Server, tiny: dict[str, Path]) -> Server:
        cls.model_dir = tiny["ce"]
        return st_server

    def reference(self, query: str, documents: list[str]) -> list[float]:
        return cross_encoder_scores(self.model_dir, query, documents)


class TestSentenceTransformersModeration(ModerationSuite):
    model_dir: ClassVar[Path]

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, st_server: Server, tiny: dict[str, Path]) -> Server:
        cls.model_dir = tiny["clf"]
        return st_server

    def reference(self, texts: list[str]) -> np.ndarray:
        return classifier_probs(self.model_dir, texts)
