"""Models as live resources (issue 22): the admin API loads, unloads, scales, restarts and
reloads models of a running `gpt-server serve` while streaming clients keep going with zero
failed requests; an on_demand model loads on its first request and leaves after keep_alive;
the memory budget evicts an idle on_demand model or answers 503 with the numbers.

One server for the module (tiny SmolLM2 GGUF + all-MiniLM-L6-v2); the tests run in order."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.embed_helpers import MINILM
from tests.helpers import Server, base_config, served, smollm_entry

API_KEY = "rt-api-key"
ADMIN = "rt-admin-key"
GiB = 2**30


def _embed_entry() -> dict[str, Any]:
    return {
        "minilm": {
            "alias": "text-embedding-3-small",
            "model_config": {"model_name_or_path": MINILM},
            "model_type": "embedding",
            "work_mode": "sentence_transformers",
            "device": "cpu",
            "load": "on_demand",
            "keep_alive": 3,
            "workers": [{"gpus": []}],
            "memory_estimate": "1GiB",
        }
    }


def _config() -> dict[str, Any]:
    chat = smollm_entry("smollm2")
    chat["smollm2"]["memory_estimate"] = "1GiB"
    cfg = base_config(api_keys=API_KEY, models=[chat, _embed_entry()])
    cfg["serve_args"]["admin_keys"] = [ADMIN]
    cfg["serve_args"]["memory_budget"] = "2.5GiB"
    cfg["serve_args"]["shutdown_timeout"] = 20
    return cfg


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with served(_config(), tmp_path_factory.mktemp("runtime"), "runtime_models", 1) as srv:
        yield srv


def _admin(server: Server, method: str, path: str, key: str | None = ADMIN, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{server.base_url}{path}", headers=headers, timeout=240, **kw)


def _model(server: Server, name: str) -> dict[str, Any]:
    data = _admin(server, "GET", "/admin/models").json()["data"]
    return next(m for m in data if m["name"] == name)


def _listed(server: Server) -> dict[str, int]:
    r = httpx.get(f"{server.base_url}/v1/models", headers=server.headers(), timeout=10)
    return {m["id"]: m["workers"] for m in r.json()["data"]}


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


class StreamLoad:
    """Clients streaming chat completions back to back; every one must end with [DONE] and
    no error event."""

    def __init__(self, server: Server, model: str, clients: int = 2) -> None:
        self.server, self.model = server, model
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _one(self, client: httpx.Client) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "Count to five."}], "max_tokens": 12,
                "stream": True, "temperature": 0}
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                self.failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
                return
            lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        if not lines or lines[-1] != "data: [DONE]" or any('"error"' in ln for ln in lines):
            self.failures.append(f"bad stream ending: {lines[-2:]}")
        else:
            self.ok += 1

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.base_url, headers=self.server.headers(), timeout=120) as client:
            while not self._stop.is_set():
                try:
                    self._one(client)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> StreamLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)


def test_admin_routes_refuse_api_keys_and_anonymous(server: Server) -> None:
    for method, path in [("GET", "/admin/models"), ("POST", "/admin/reload"), ("DELETE", "/admin/models/smollm2"),
                         ("POST", "/admin/models/smollm2/scale")]:
        anon = _admin(server, method, path, key=None, json={"replicas": 1})
        assert anon.status_code == 401, (path, anon.text)
        assert set(anon.json()["error"]) == {"message", "type", "param", "code"}
        as_api = _admin(server, method, path, key=API_KEY, json={"replicas": 1})
        assert as_api.status_code == 403 and as_api.json()["error"]["code"] == "admin_key_required", as_api.text
    assert _model(server, "smollm2")["state"] == "ready"
    # the admin key is not an API key either
    assert httpx.get(f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 401
    # bad input: named 400s, unknown model 404, never a 500
    bad = _admin(server, "POST", "/admin/models", json={"x": {"model_config": {"model_name_or_path": "/nope.gguf"}, "work_mode": "llama_cpp", "n_gpu": 3}})
    assert bad.status_code == 400 and "x.n_gpu: unknown key" in bad.json()["error"]["message"], bad.text
    assert _admin(server, "POST", "/admin/models/smollm2/scale", json={"replicas": 1000}).status_code == 400
    assert _admin(server, "POST", "/admin/models/nope/scale", json={"replicas": 1}).status_code == 404
    dup = _admin(server, "POST", "/admin/models", json=smollm_entry("smollm2"))
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "model_exists"
    # the CLI over the same API
    env = {**os.environ, "GPT_SERVER_ADMIN_KEY": ADMIN}
    out = subprocess.run([sys.executable, "-m", "gpt_server.cli", "models", "--url", server.base_url, "ls"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "smollm2" in out.stdout and "ready" in out.stdout and "minilm" in out.stdout and "unloaded" in out.stdout
    denied = subprocess.run([sys.executable, "-m", "gpt_server.cli", "models", "--url", server.base_url, "--admin-key", API_KEY, "ls"],
                            capture_output=True, text=True, timeout=60)
    assert denied.returncode == 1 and "HTTP 403" in denied.stderr


def test_runtime_lora_adapters_are_refused_by_name_where_the_engine_cannot(server: Server, tmp_path: Path) -> None:
    """POST /admin/models/<name>/adapters on llama.cpp: a 400 naming the engine (vLLM with
    runtime_lora loads them: tests/engines/test_vllm.py); bad bodies are 400, unknown names 404,
    an API key 403 — and nothing changes."""
    url = "/admin/models/smollm2/adapters"
    body = {"name": "my-lora", "path": str(tmp_path)}
    r = _admin(server, "POST", url, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "runtime_lora_unsupported" and "'llama_cpp'" in err["message"], err
    assert _admin(server, "POST", url, key=API_KEY, json=body).status_code == 403
    assert _admin(server, "POST", url, key=None, json=body).status_code == 401
    for bad in ({"name": "x" * 129, "path": str(tmp_path)}, {"name": "bad name", "path": str(tmp_path)},
                {"name": "ok", "path": "relative/dir"}, {"name": "ok", "path": "/" + "a" * 5000}, {"name": "ok"}):
        r = _admin(server, "POST", url, json=bad)
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}, (bad, r.text)
    taken = _admin(server, "POST", url, json={"name": "text-embedding-3-small", "path": str(tmp_path)})  # minilm's alias
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "model_exists", taken.text
    assert _admin(server, "POST", "/admin/models/nope/adapters", json=body).status_code == 404
    gone = _admin(server, "DELETE", f"{url}/my-lora")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "adapter_not_found", gone.text
    assert _model(server, "smollm2")["adapters"] == [] and "my-lora" not in _listed(server)


def test_on_demand_model_loads_on_first_request_and_unloads_after_keep_alive(server: Server) -> None:
    # listed while unloaded (workers: 0), so clients can find it
    assert _listed(server).get("minilm") == 0 and _model(server, "minilm")["state"] == "unloaded"
    t0 = time.monotonic()
    r = httpx.post(f"{server.base_url}/v1/embeddings", headers=server.headers(), timeout=240,
                   json={"model": "text-embedding-3-small", "input": ["hello", "world"]})
    first = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2
    assert _model(server, "minilm")["state"] == "ready" and _listed(server)["minilm"] == 1
    # used again within keep_alive: stays; then idle past keep_alive (3 s): unloaded, still listed
    assert httpx.post(f"{server.base_url}/v1/embeddings", headers=server.headers(), timeout=60,
                      json={"model": "minilm", "input": "again"}).status_code == 200
    _wait(lambda: _model(server, "minilm")["state"] == "unloaded", 30, "minilm to unload after keep_alive")
    assert _listed(server).get("minilm") == 0
    print(f"on_demand first request (load included): {first:.1f}s")


def test_load_scale_restart_unload_under_streaming_load_zero_failures(server: Server) -> None:
    extra = smollm_entry("smollm2-b")
    extra["smollm2-b"]["alias"] = []
    extra["smollm2-b"]["memory_estimate"] = "256MiB"
    with StreamLoad(server, "smollm2") as load:
        t0 = time.monotonic()
        r = _admin(server, "POST", "/admin/models", json=extra)
        assert r.status_code == 200 and r.json()["state"] == "ready", r.text
        assert "smollm2-b" in _listed(server)  # shows at once
        load_s = time.monotonic() - t0
        r = _admin(server, "POST", "/admin/models/smollm2/scale", json={"replicas": 2})
        assert r.status_code == 200 and [x["state"] for x in r.json()["replicas"]] == ["ready", "ready"], r.text
        assert _listed(server)["smollm2"] == 2
        r = _admin(server, "POST", "/admin/models/smollm2/replicas/0/restart")
        assert r.status_code == 200, r.text
        assert sorted(x["state"] for x in r.json()["replicas"]) == ["ready", "ready"]
        r = _admin(server, "POST", "/admin/models/smollm2/scale", json={"replicas": 1})
        assert r.status_code == 200 and len(r.json()["replicas"]) == 1, r.text
        with StreamLoad(server, "smollm2-b", clients=1) as load_b:
            time.sleep(1.5)
            r = _admin(server, "DELETE", "/admin/models/smollm2-b")  # drain, then stop
            assert r.status_code == 200 and r.json()["state"] == "unloaded", r.text
            load_b._stop.set()
        time.sleep(1)
    print(f"streams ok={load.ok} failed={len(load.failures)}; smollm2-b ok={load_b.ok} failed={len(load_b.failures)}; load {load_s:.1f}s")
    assert load.failures == [] and load.ok >= 10, (load.ok, load.failures[:5])
    # the streams on smollm2-b in flight when it was unloaded finished; later ones may find it gone
    assert load_b.ok >= 1 and all("404" in f or "503" in f for f in load_b.failures), load_b.failures[:5]
    assert "smollm2-b" not in _listed(server)
    gone = httpx.post(f"{server.base_url}/v1/chat/completions", headers=server.headers(), timeout=30,
                      json={"model": "smollm2-b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert gone.status_code == 404, gone.text


def test_reload_applies_only_the_difference(server: Server) -> None:
    path = Path(server.config_path)
    before = yaml.safe_load(path.read_text())
    # a bad file is refused whole, with the key named; nothing changes
    bad = copy.deepcopy(before)
    bad["models"].append({"other": {"model_config": {"model_name_or_path": "/x"}, "work_mode": "nope"}})
    bad["models"][0]["smollm2"]["model_config"]["n_ctx"] = 1024
    path.write_text(yaml.safe_dump(bad))
    r = _admin(server, "POST", "/admin/reload")
    assert r.status_code == 400 and "work_mode" in r.json()["error"]["message"] and "models[2].other" in r.json()["error"]["message"], r.text
    worker_before = {x["worker_id"] for x in _model(server, "smollm2")["replicas"]}
    # changed smollm2 (rolling replace), added an on_demand chat model, minilm untouched: by SIGHUP
    new = copy.deepcopy(before)
    new["models"][0]["smollm2"]["model_config"]["n_ctx"] = 1024
    added = smollm_entry("smollm2-c")
    added["smollm2-c"].update(alias=[], load="on_demand", memory_estimate="256MiB")
    new["models"].append(added)
    path.write_text(yaml.safe_dump(new))
    with StreamLoad(server, "smollm2") as load:
        time.sleep(0.5)
        os.kill(server.proc.pid, signal.SIGHUP)
        _wait(lambda: {x["worker_id"] for x in _model(server, "smollm2")["replicas"]}.isdisjoint(worker_before)
              and _model(server, "smollm2")["state"] == "ready", 180, "smollm2 to be replaced")
        time.sleep(1)
    print(f"reload under load: ok={load.ok} failed={len(load.failures)}")
    assert load.failures == [] and load.ok >= 3, (load.ok, load.failures[:5])
    assert "config reloaded" in server.proc.log_text(40000)
    assert _model(server, "smollm2-c")["state"] == "unloaded" and "smollm2-c" in _listed(server)
    assert _model(server, "minilm")["state"] == "unloaded"
    # again through the CLI: nothing changed since the SIGHUP
    out = subprocess.run([sys.executable, "-m", "gpt_server.cli", "models", "--url", server.base_url, "--admin-key", ADMIN, "reload"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "added: -; removed: -; changed: -; unchanged: minilm, smollm2, smollm2-c;" in out.stdout, out.stdout


def test_memory_budget_evicts_idle_on_demand_then_refuses_with_numbers(server: Server) -> None:
    # budget 2.5 GiB: smollm2 (1 GiB, eager) + minilm (1 GiB, on demand) fit
    r = httpx.post(f"{server.base_url}/v1/embeddings", headers=server.headers(), timeout=240, json={"model": "minilm", "input": "x"})
    assert r.status_code == 200, r.text
    assert _model(server, "minilm")["state"] == "ready"
    # a 1 GiB eager model: minilm (idle, on_demand) is unloaded to make room
    big = smollm_entry("big")
    big["big"].update(alias=[], memory_estimate="1GiB")
    r = _admin(server, "POST", "/admin/models", json=big)
    assert r.status_code == 200 and r.json()["state"] == "ready", r.text
    assert _model(server, "minilm")["state"] == "unloaded"
    # now 2 GiB of eager models: minilm's 1 GiB does not fit and nothing idle can go → 503 with the numbers
    r = httpx.post(f"{server.base_url}/v1/embeddings", headers=server.headers(), timeout=60, json={"model": "minilm", "input": "x"})
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "memory_budget_exceeded"
    assert "1.0 GiB" in err["message"] and "2.0 GiB" in err["message"] and "2.5 GiB" in err["message"], err
    listing = _admin(server, "GET", "/admin/models").json()
    assert listing["memory"] == {"budget_bytes": int(2.5 * GiB), "used_bytes": 2 * GiB}
