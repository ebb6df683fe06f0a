"""work_mode: infinity — the worker starts infinity_emb's own server from a separate
interpreter and relays to it. Needs GPT_SERVER_INFINITY_PYTHON: a Python with
``infinity-emb[torch,server]==0.0.78`` installed (see docs/embeddings.md); the rest of
this module is skipped without it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from gpt_server.backends.base import BackendSpec
from gpt_server.config import ConfigError, parse_config
from tests.embed_helpers import MINILM, build_classifier, build_cross_encoder, entry, minilm_dir
from tests.helpers import Server, base_config, served

PYTHON = os.environ.get("GPT_SERVER_INFINITY_PYTHON", "")
TEXTS = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock markets fell sharply today."]
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
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not (PYTHON and Path(PYTHON).exists()):
        pytest.skip("GPT_SERVER_INFINITY_PYTHON not set")
    tmp = tmp_path_factory.mktemp("infinity")
    ce, clf = build_cross_encoder(tmp / "ce"), build_classifier(tmp / "clf")
    models = [
        # gpt_server's legacy model_type selects the infinity engine by itself
        entry("inf-minilm", MINILM, "embedding_infinity", work_mode=None, python=PYTHON),
        entry("inf-rerank", str(ce), "rerank", work_mode="infinity", python=PYTHON),
        entry("inf-mod", str(clf), "moderation", work_mode="infinity", python=PYTHON),
    ]
    with served(base_config(models=models), tmp, "infinity", 3, timeout=300) as srv:
        yield srv, ce, clf


@needs_infinity
def test_infinity_embeddings_equal_sentence_transformers(server) -> None:  # noqa: ANN001
    import torch
    from sentence_transformers import SentenceTransformer

    srv, _, _ = server
    client = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key="none", max_retries=0, timeout=60)
    r = client.embeddings.create(model="inf-minilm", input=TEXTS)  # base64 by default
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    torch.set_num_threads(1)
    ref = SentenceTransformer(minilm_dir(), device="cpu")
    np.testing.assert_allclose(got, ref.encode(TEXTS), atol=1e-4)
    assert r.usage.prompt_tokens == sum(len(ref.tokenizer(t)["input_ids"]) for t in TEXTS)
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="inf-minilm", input=[[101, 102]])
    assert e.value.body["param"] == "input"


@needs_infinity
def test_infinity_rerank_and_moderation(server) -> None:  # noqa: ANN001
    import cohere
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    srv, ce_dir, clf_dir = server
    torch.set_num_threads(1)
    ref = [float(s) for s in CrossEncoder(str(ce_dir), device="cpu").predict([["cats", t] for t in TEXTS])]
    r = cohere.Client(base_url=srv.base_url, api_key="none").rerank(model="inf-rerank", query="cats", documents=TEXTS)
    assert [x.index for x in r.results] == sorted(range(len(TEXTS)), key=lambda i: -ref[i])
    for x in r.results:
        assert x.relevance_score == pytest.approx(ref[x.index], abs=1e-4)

    tok = AutoTokenizer.from_pretrained(clf_dir)
    model = AutoModelForSequenceClassification.from_pretrained(clf_dir).eval()
    with torch.inference_mode():
        probs = torch.softmax(model(**tok(TEXTS, padding=True, return_tensors="pt")).logits, -1).numpy()
    client = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key="none", max_retries=0, timeout=60)
    m = client.moderations.create(model="inf-mod", input=TEXTS)
    for res, p in zip(m.results, probs, strict=True):
        assert res.category_scores.harassment == pytest.approx(max(p[0], p[1]), abs=1e-4)


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
def test_a_crashed_infinity_is_restarted(server) -> None:  # noqa: ANN001
    """Last in the module: the worker supervises infinity like the engine servers."""
    srv, _, _ = server
    (old,) = _infinity_pids("inf-minilm")
    os.kill(old, signal.SIGKILL)
    saw_unhealthy = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        (w,) = [w for w in srv.workers() if w["model_name"] == "inf-minilm"]
        saw_unhealthy = saw_unhealthy or not w["healthy"]
        pids = _infinity_pids("inf-minilm")
        if saw_unhealthy and w["healthy"] and pids and old not in pids:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"infinity did not come back:\n{srv.proc.log_text()}")
    client = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key="none", max_retries=0, timeout=60)
    assert len(client.embeddings.create(model="inf-minilm", input=TEXTS).data) == len(TEXTS)
    assert "restarting it" in srv.proc.new_log()
