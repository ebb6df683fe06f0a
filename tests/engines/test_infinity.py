"""work_mode: infinity — the worker starts infinity_emb's own server from a separate
interpreter and relays to it. Needs GPT_SERVER_INFINITY_PYTHON: a Python with
``infinity-emb[torch,server]==0.0.78`` installed (see docs/embeddings.md); the suites are
skipped without it. One server holds the embedding, rerank and moderation models."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import openai
import pytest

from gpt_server.backends.base import BackendSpec
from gpt_server.config import ConfigError, parse_config
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
    minilm_dir,
    minilm_vectors,
)
from tests.helpers import Server, base_config, served

PYTHON = os.environ.get("GPT_SERVER_INFINITY_PYTHON", "")
needs_infinity = pytest.mark.skipif(
    not (PYTHON and Path(PYTHON).exists()), reason="GPT_SERVER_INFINITY_PYTHON (infinity's own interpreter) not set"
)


def test_infinity_without_an_interpreter_is_refused_clearly() -> None:
    from gpt_server.backends.infinity.backend import InfinityBackend

    cfg = parse_config({"models": [entry("m", MINILM, "embedding_infinity", work_mode=None)]})
    e = cfg.models[0]
    assert e.kind == "embedding" and e.work_mode == "infinity"
    with pytest.raises(ConfigError, match="model_config.python"):
        InfinityBackend(BackendSpec(entry=e, model_path=minilm_dir()))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("infinity-models")
    return {"ce": build_cross_encoder(tmp / "ce"), "clf": build_classifier(tmp / "clf")}


@pytest.fixture(scope="module")
def infinity_server(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("infinity")
    models = [
        # gpt_server's legacy model_type selects the infinity engine by itself
        entry(EmbedSuite.model, MINILM, "embedding_infinity", work_mode=None, python=PYTHON),
        entry(RerankSuite.model, str(tiny["ce"]), "rerank", work_mode="infinity", python=PYTHON),
        entry(ModerationSuite.model, str(tiny["clf"]), "moderation", work_mode="infinity", python=PYTHON),
    ]
    with served(base_config(models=models), tmp, "contract_infinity", timeout=300) as srv:
        yield srv


@needs_infinity
class TestInfinityEmbed(EmbedSuite):
    dims = 384
    atol = 1e-4

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, infinity_server: Server) -> Server:
        return infinity_server

    def reference(self, texts: list[str]) -> np.ndarray:
        return minilm_vectors(texts)

    def test_token_id_inputs_are_refused(self, client: openai.OpenAI) -> None:
        with pytest.raises(openai.BadRequestError) as e:
            client.embeddings.create(model=self.model, input=[[101, 102]])
        assert e.value.body["param"] == "input"


@needs_infinity
class TestInfinityRerank(RerankSuite):
    atol = 1e-4
    model_dir: ClassVar[Path]

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, infinity_server: Server, tiny: dict[str, Path]) -> Server:
        cls.model_dir = tiny["ce"]
        return infinity_server

    def reference(self, query: str, documents: list[str]) -> list[float]:
        return cross_encoder_scores(self.model_dir, query, documents)


@needs_infinity
class TestInfinityModeration(ModerationSuite):
    atol = 1e-4
    model_dir: ClassVar[Path]

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, infinity_server: Server, tiny: dict[str, Path]) -> Server:
        cls.model_dir = tiny["clf"]
        return infinity_server

    def reference(self, texts: list[str]) -> np.ndarray:
        return classifier_probs(self.model_dir, texts)


def _infinity_pids(served_name: str) -> list[int]:
    """infinity servers started for ``served_name`` (their command line names it)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"infinity_emb.cli" in argv and served_name.encode() in argv:
            out.append(int(d.name))
    return out


@needs_infinity
def test_a_crashed_infinity_is_restarted(infinity_server: Server) -> None:
    """Last in the module: the worker supervises infinity like the engine servers."""
    srv = infinity_server
    (old,) = _infinity_pids(EmbedSuite.model)
    os.kill(old, signal.SIGKILL)
    saw_unhealthy = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        (w,) = [w for w in srv.workers() if w["model_name"] == EmbedSuite.model]
        saw_unhealthy = saw_unhealthy or not w["healthy"]
        pids = _infinity_pids(EmbedSuite.model)
        if saw_unhealthy and w["healthy"] and pids and old not in pids:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"infinity did not come back:\n{srv.proc.log_text()}")
    client = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key="none", max_retries=0, timeout=60)
    assert len(client.embeddings.create(model=EmbedSuite.model, input=["a", "b"]).data) == 2
    assert "restarting it" in srv.proc.new_log()
