"""gpt_server's config shape, run unchanged: tests/data/gpt_server_config.yaml is written the
way gpt_server's own example is (its sections, keys and model types), its paths pointing at this
suite's tiny models. `check-config` accepts it and `serve` serves it: chat on work_mode hf with
an entry-level LoRA, embeddings, and a cross-encoder declared `model_type: embedding` that
becomes a rerank model, reachable through gpt_server's "rerank through the embeddings call"
(`embeddings.create(..., extra_body={"query": ...})`, one score per document)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gpt_server.backends.relay.commands import LaunchSpec, build_command
from gpt_server.config import parse_config
from tests.embed_helpers import (
    MINILM,
    build_classifier,
    build_cross_encoder,
    cross_encoder_scores,
    minilm_vectors,
    tiny_clip_dir,
)
from tests.helpers import Server, free_port, served
from tests.hf_helpers import lora_dir, smollm_hf_dir

TEMPLATE = Path(__file__).resolve().parents[1] / "data" / "gpt_server_config.yaml"


def _fill(tmp: Path, **extra: str) -> tuple[str, dict[str, Any]]:
    ce = tmp / "ce"
    if not ce.exists():
        build_cross_encoder(ce)
        build_classifier(tmp / "clf")
    port, cport = free_port(), free_port()
    values = {
        "PORT": str(port), "CONTROLLER_PORT": str(cport), "CHAT_MODEL": str(smollm_hf_dir()), "LORA": str(lora_dir(1)),
        "CROSS_ENCODER": str(ce), "CLASSIFIER": str(tmp / "clf"), "EMBEDDING_MODEL": MINILM, "CLIP": str(tiny_clip_dir()),
        **extra,
    }
    text = TEMPLATE.read_text()
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", v)
    return text, yaml.safe_load(text)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpt-server-shape")


@pytest.fixture(scope="module")
def server(models_dir: Path) -> Iterator[Server]:
    text, data = _fill(models_dir)
    with served(data, models_dir, "gpt_server_shape", workers=4, config_text=text, timeout=300) as srv:
        yield srv


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpt_server.cli", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_check_config_accepts_it_and_reads_it_as_gpt_server_does(models_dir: Path) -> None:
    text, data = _fill(models_dir)
    path = models_dir / "config.yaml"
    path.write_text(text)
    r = _check_config(path)
    assert r.returncode == 0 and "ok (4 model(s) enabled)" in r.stdout, r.stdout + r.stderr
    cfg = parse_config(data)
    m = {e.name: e for e in cfg.models}
    assert (m["qwen"].kind, m["qwen"].work_mode) == ("auto", "lmdeploy-turbomind")
    assert m["qwen"].model_config_.kv_cache_quant_policy == 0  # type: ignore[attr-defined]
    assert m["qwen-hf"].model_config_.lora == {"test_lora": str(lora_dir(1))}  # type: ignore[attr-defined]
    # model_type embedding on a cross-encoder / a classifier: gpt_server's infinity worker decides the same
    assert (m["bge-reranker-base"].kind, m["bge-reranker-base"].work_mode) == ("rerank", "infinity")
    assert (m["jina-reranker"].kind, m["text-moderation"].kind, m["acge_text_embedding"].kind) == ("rerank", "moderation", "embedding")
    # gpt_server's vLLM reranker: rerank on vllm, launched as a pooling runner with its hf_overrides
    q3 = m["qwen3-reranker"]
    assert (q3.kind, q3.work_mode) == ("rerank", "vllm")
    argv = build_command(LaunchSpec(engine="vllm", model_path="m", served_name=q3.name, port=1, config=q3.model_config_,  # type: ignore[arg-type]
                                    gpus=[6], rerank=True)).argv
    assert argv[argv.index("--runner") + 1] == "pooling" and "--dtype" in argv
    assert json.loads(argv[argv.index("--hf-overrides") + 1])["is_original_qwen3_reranker"] is True
    assert (m["bge-vl"].kind, m["bge-vl"].work_mode) == ("embedding", "sentence_transformers")
    for name in ("flux", "qwen-image", "z_image", "image-edit"):  # work_mode hf on an image model: diffusers
        assert (m[name].kind, m[name].work_mode) == ("image", "diffusers"), name
    assert m["image-edit"].port == 8084
    assert cfg.model_worker_args.log_level == "warning" and cfg.model_worker_args.limit_worker_concurrency == 1024


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("model_type: z_image", "model_type: wan"), "model_type 'wan' is not supported: Wan is a text-to-video model"),
        (("  enable: true\n  host: 127.0.0.1\n  port: {{CONTROLLER_PORT}}", "  enable: false\n  host: 127.0.0.1\n  port: {{CONTROLLER_PORT}}"),
         "controller_args.enable: false is not supported"),
        (("      max_model_len: 2048\n", "      max_model_len: 2048\n      gpu_memory_utilization: 0.8\n"),
         "models[1].qwen-hf.model_config.gpu_memory_utilization: unknown key for work_mode hf"),
        (("      kv_cache_quant_policy: 0\n", "      kv_cache_quant_policy: 0\n      n_threads: 4\n"),
         "models[0].qwen.model_config.n_threads: not supported by engine 'lmdeploy-turbomind'"),
        # the example's two entries no engine here runs (SenseVoiceSmall, tts), as gpt_server writes them
        (("    model_type: qwen # qwen", "    model_type: funasr # qwen"),
         "FunASR models (SenseVoice, Paraformer) need the FunASR runtime, which no engine here runs"),
        (("    model_type: qwen # qwen  yi internlm 等,也可设置为 auto\n    work_mode: lmdeploy-turbomind",
          "    model_type: spark_tts\n    work_mode: vllm"),
         "Spark-TTS needs its own runtime, which no engine here runs; serve a Piper voice with work_mode piper"),
    ],
)
def test_what_has_no_counterpart_is_refused_by_name(models_dir: Path, change: tuple[str, str], message: str) -> None:
    filled, data = _fill(models_dir)
    old, new = (c.replace("{{CONTROLLER_PORT}}", str(data["controller_args"]["port"])) for c in change)
    assert old in filled
    text = filled.replace(old, new)
    path = models_dir / "refused.yaml"
    path.write_text(text)
    r = _check_config(path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bge-reranker-base", "models.bge-reranker-base.model_config.python: work_mode infinity needs the path of a Python "
         "interpreter where 'infinity-emb[torch,server]==0.0.78' is installed"),
        ("text-moderation", "models.text-moderation.model_config.python: work_mode infinity needs the path"),
        ("qwen3-reranker", "models.qwen3-reranker.model_config.python: work_mode vllm needs the 'vllm' package, which this "
         "server's Python (set model_config.python to the engine's virtualenv) cannot import"),
    ],
)
def test_gpu_entries_enabled_as_written_stop_serve_naming_the_key(models_dir: Path, name: str, message: str) -> None:
    """An entry enabled exactly as gpt_server writes it, whose engine this host lacks (infinity's
    virtualenv, vLLM): serve stops at once with exit code 2 and the key to set, never a restart loop."""
    text, _ = _fill(models_dir)
    start = text.index(f"- {name}:")
    at = text.index("enable: false", start)
    path = models_dir / f"{name}.yaml"
    path.write_text(text[:at] + "enable: true" + text[at + len("enable: false"):])
    r = subprocess.run([sys.executable, "-m", "gpt_server.cli", "serve", "-c", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr, r.stderr


def test_it_serves_chat_lora_and_embeddings(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    ids = {m.id for m in client.models.list().data}
    assert {"qwen-hf", "gpt-4o", "test_lora", "jina-reranker", "acge_text_embedding", "text-embedding-ada-002"} <= ids, ids
    for model in ("gpt-4o", "test_lora"):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert r.choices[0].message.content is not None
    e = client.embeddings.create(model="text-embedding-ada-002", input=["hello world"])
    assert abs(sum(a * b for a, b in zip(e.data[0].embedding, minilm_vectors(["hello world"])[0], strict=True)) - 1) < 1e-3
    # bge-vl: text and an image in one call, one vector each of the same size
    png = base64.b64encode(_png()).decode("ascii")
    vl = client.embeddings.create(model="bge-vl", input=["a red square", {"image": f"data:image/png;base64,{png}"}])  # type: ignore[list-item]
    assert len(vl.data) == 2 and len(vl.data[0].embedding) == len(vl.data[1].embedding) > 0


def test_rerank_through_the_embeddings_call(server: Server, models_dir: Path) -> None:
    """gpt_server's documented call: documents as input, the query in the body; each embedding
    is [relevance score], in input order, the score /v1/rerank gives rounded to 6 places."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    query, docs = "what is a panda?", ["hi", "The giant panda is a bear native to China.", "Paris is in France."]
    out = client.embeddings.create(model="jina-reranker", input=docs, extra_body={"query": query})
    assert [d.index for d in out.data] == [0, 1, 2]
    got = [d.embedding for d in out.data]
    assert all(len(g) == 1 for g in got), got
    ranked = httpx.post(f"{server.base_url}/v1/rerank", json={"model": "jina-reranker", "query": query, "documents": docs}, timeout=60).json()
    by_index = {r["index"]: r["relevance_score"] for r in ranked["results"]}
    for i, g in enumerate(got):
        assert abs(g[0] - round(by_index[i], 6)) < 1e-6, (got, by_index)
    expected = cross_encoder_scores(models_dir / "ce", query, docs)
    assert max(abs(g[0] - s) for g, s in zip(got, expected, strict=True)) < 1e-4, (got, expected)
    assert out.usage.prompt_tokens > 0
    # float encoding as asked, and clear 400s for what the call cannot mean
    raw = httpx.post(f"{server.base_url}/v1/embeddings", timeout=60,
                     json={"model": "jina-reranker", "input": docs, "query": query, "encoding_format": "float"}).json()
    assert [d["embedding"] for d in raw["data"]] == [[round(by_index[i], 6)] for i in range(3)]
    for body, param in (({"input": [[1, 2, 3]]}, "input"), ({"input": docs, "dimensions": 2}, "query")):
        r = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": "jina-reranker", "query": query, **body}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": "acge_text_embedding", "query": query, "input": docs}, timeout=60)
    assert r.status_code in (400, 404) and r.json()["error"]["message"], r.text
