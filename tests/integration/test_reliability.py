"""Faults, limits and security with real processes: kill -9 under load, 429, timeouts,
graceful shutdown, internal secret, CORS, metrics."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from tests.helpers import Server, base_config, served, smollm_entry

LONG = {"role": "user", "content": "Write a very long story about the sea."}
NO_EOS = {"2": -100}  # SmolLM2's end-of-turn token: streams run to max_tokens


def _sse(url: str, body: dict[str, Any], headers: dict[str, str] | None = None, timeout: float = 120) -> dict[str, Any]:
    """Read a whole SSE stream; report what it ended with."""
    out: dict[str, Any] = {"events": 0, "finish": None, "error": None, "done": False, "status": None}
    with httpx.stream("POST", url, json=body, headers=headers or {}, timeout=timeout) as r:
        out["status"] = r.status_code
        if r.status_code != 200:
            out["error"] = json.loads(r.read())["error"]
            return out
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                out["done"] = True
                continue
            assert not out["done"], "nothing may follow [DONE]"
            obj = json.loads(data)  # never truncated JSON
            out["events"] += 1
            if "error" in obj:
                out["error"] = obj["error"]
            for ch in obj.get("choices", []):
                out["finish"] = ch.get("finish_reason") or out["finish"]
    return out


def test_kill_worker_under_load(tmp_path) -> None:  # noqa: ANN001
    cfg = base_config(models=[smollm_entry(replicas=2, n_parallel=4)])
    with served(cfg, tmp_path, "chaos_kill", 2) as srv:
        workers = srv.ready_workers
        url = f"{srv.base_url}/v1/chat/completions"
        results: list[dict[str, Any]] = []
        lock = threading.Lock()

        def run(i: int) -> None:
            body = {"model": "smollm2", "messages": [LONG], "max_tokens": 150, "stream": True, "seed": i, "logit_bias": NO_EOS}
            r = _sse(url, body)
            with lock:
                results.append(r)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        os.kill(workers[0]["pid"], signal.SIGKILL)
        for t in threads:
            t.join(120)
        assert len(results) == 20, "no stream may hang"
        for r in results:
            assert r["status"] == 200 and r["done"], r
            assert (r["finish"] == "length") != (r["error"] is not None), r  # finished, or ended with an error event
        lost = [r for r in results if r["error"]]
        assert lost, "some streams ran on the killed worker"
        assert all(r["error"]["code"] == "worker_lost" for r in lost)
        # requests after the kill go to the surviving replica
        for _ in range(4):
            r = httpx.post(url, json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, timeout=60)
            assert r.status_code == 200, r.text


def test_queue_limit_429_and_timeout_504(tmp_path) -> None:  # noqa: ANN001
    cfg = base_config(models=[smollm_entry(n_parallel=1)])
    cfg["model_worker_args"]["limit_worker_concurrency"] = 1
    cfg["serve_args"]["request_timeout"] = 2
    with served(cfg, tmp_path, "limits", 1) as srv:
        url = f"{srv.base_url}/v1/chat/completions"
        holder = threading.Thread(target=_sse, args=(url, {"model": "smollm2", "messages": [LONG], "max_tokens": 400, "stream": True, "logit_bias": NO_EOS}))
        holder.start()
        time.sleep(0.7)
        r = httpx.post(url, json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=30)
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"
        holder.join(60)
        # the engine is slower than the request timeout: 504, and a stream ends with an error event
        r = httpx.post(url, json={"model": "smollm2", "messages": [LONG], "max_tokens": 1000, "logit_bias": NO_EOS}, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        s = _sse(url, {"model": "smollm2", "messages": [LONG], "max_tokens": 1000, "stream": True, "logit_bias": NO_EOS})
        assert s["done"] and s["error"]["code"] == "timeout"
        # the timed-out generation was cancelled in the engine
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and httpx.get(f"{srv.workers()[0]['address']}/worker/info", headers=srv.internal_headers()).json()["inflight"]:
            time.sleep(0.1)
        assert httpx.get(f"{srv.workers()[0]['address']}/worker/info", headers=srv.internal_headers()).json()["inflight"] == 0


def test_internal_secret_cors_and_metrics(tmp_path) -> None:  # noqa: ANN001
    cfg = base_config(api_keys="k1")
    cfg["controller_args"]["secret"] = "s3cret"
    cfg["serve_args"]["cors_origins"] = ["http://example.test"]
    with Server(cfg, tmp_path, "secret") as srv:
        base = srv.controller_url
        deadline = time.monotonic() + 60
        workers: list = []
        while time.monotonic() < deadline and not workers:
            try:
                workers = httpx.get(f"{base}/controller/workers", headers={"X-GPT-Server-Secret": "s3cret"}).json()
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert workers, "workers register with the secret from the config"
        # nobody registers a rogue worker or reads the registry without the secret
        rogue = {"worker_id": "rogue", "address": "http://127.0.0.1:1", "model_name": "smollm2", "capacity": 1}
        assert httpx.post(f"{base}/controller/register", json=rogue).status_code == 401
        assert httpx.get(f"{base}/controller/workers").status_code == 401
        # nor calls a worker directly
        r = httpx.post(f"{workers[0]['address']}/worker/generate", json={"request_id": "x", "model": "smollm2", "kind": "completion", "prompts": ["hi"]})
        assert r.status_code == 401
        auth = {"Authorization": "Bearer k1"}
        r = httpx.post(f"{srv.base_url}/v1/chat/completions", json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}, headers={**auth, "Origin": "http://example.test"}, timeout=60)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://example.test"
        r = httpx.get(f"{srv.base_url}/v1/models", headers={**auth, "Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in r.headers
        assert httpx.get(f"{srv.base_url}/metrics").status_code == 401
        m = httpx.get(f"{srv.base_url}/metrics", headers=auth).text
        assert 'gpt_server_tokens_total{kind="completion",model="smollm2"' in m
        assert "gpt_server_time_to_first_token_seconds_bucket" in m
        assert 'gpt_server_worker_queue_length{model="smollm2"' in m


def test_no_cors_by_default_and_graceful_shutdown(tmp_path) -> None:  # noqa: ANN001
    with served(base_config(), tmp_path, "graceful", 1) as srv:
        url = f"{srv.base_url}/v1/chat/completions"
        r = httpx.get(f"{srv.base_url}/v1/models", headers={"Origin": "http://example.test"})
        assert "access-control-allow-origin" not in r.headers
        result: dict[str, Any] = {}
        t = threading.Thread(target=lambda: result.update(_sse(url, {"model": "smollm2", "messages": [LONG], "max_tokens": 120, "stream": True, "logit_bias": NO_EOS})))
        t.start()
        time.sleep(0.5)
        srv.proc.popen.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{srv.base_url}/health", timeout=2)
        t.join(60)
        assert result["done"] and result["finish"] == "length" and result["error"] is None, result
        assert srv.proc.popen.wait(60) == 0
