"""Two replicas behind each dispatch policy; a killed replica; restart by the launcher."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.helpers import base_config, served, smollm_entry

POLICIES = ["lottery", "shortest_queue", "round_robin", "least_busy"]


def _ask(client: openai.OpenAI, i: int) -> str:
    r = client.chat.completions.create(
        model="gpt-3.5-turbo", messages=[{"role": "user", "content": f"Say the number {i}."}], max_tokens=4, temperature=0
    )
    return r.choices[0].finish_reason


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_spreads_load(policy: str, tmp_path) -> None:  # noqa: ANN001
    cfg = base_config(dispatch=policy, models=[smollm_entry(replicas=2)])
    with served(cfg, tmp_path, f"replicas_{policy}", 2) as srv:
        client = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key="x", max_retries=0, timeout=60)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda i: _ask(client, i), range(16)))
        assert all(r in ("stop", "length") for r in results)
        counts = sorted(w["dispatched_total"] for w in srv.workers())
        assert sum(counts) == 16
        if policy == "round_robin":
            assert counts == [8, 8]
        else:
            assert counts[0] >= 2, counts  # both replicas served


def test_killed_replica_other_keeps_serving_and_is_restarted(tmp_path) -> None:  # noqa: ANN001
    cfg = base_config(models=[smollm_entry(replicas=2)])
    with served(cfg, tmp_path, "replicas_kill", 2) as srv:
        workers = srv.ready_workers
        client = openai.OpenAI(base_url=f"{srv.base_url}/v1", api_key="x", max_retries=0, timeout=60)
        victim = workers[0]
        os.kill(victim["pid"], signal.SIGKILL)
        # every request succeeds: the dead replica is skipped before the first byte
        for i in range(8):
            assert _ask(client, i) in ("stop", "length")
        ids = {m.id for m in client.models.list().data}
        assert {"smollm2", "gpt-3.5-turbo"} <= ids
        # the launcher restarts the dead worker (new pid) and it registers again
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ws = srv.workers()
            pids = {w["pid"] for w in ws}
            if len(ws) == 2 and victim["pid"] not in pids and all(w["healthy"] for w in ws):
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"worker was not restarted: {srv.workers()}\n{srv.proc.log_text()}")
        assert "restarting" in srv.proc.log_text()
        for i in range(4):
            assert _ask(client, i) in ("stop", "length")


def test_models_follow_workers(tmp_path) -> None:  # noqa: ANN001
    """/v1/models lists a model while a worker is up and drops it when the last one goes."""
    cfg = base_config(models=[smollm_entry(replicas=1)])
    with served(cfg, tmp_path, "models_live", 1) as srv:
        ws = srv.ready_workers
        assert "smollm2" in {m["id"] for m in httpx.get(f"{srv.base_url}/v1/models").json()["data"]}
        os.kill(ws[0]["pid"], signal.SIGSTOP)  # a hung worker: no heartbeats, no crash
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if not httpx.get(f"{srv.base_url}/v1/models").json()["data"]:
                    break
                time.sleep(0.2)
            assert httpx.get(f"{srv.base_url}/v1/models").json()["data"] == []
            assert httpx.get(f"{srv.base_url}/health").status_code == 503
            r = httpx.post(
                f"{srv.base_url}/v1/chat/completions",
                json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert r.status_code in (404, 503) and "error" in r.json()
        finally:
            os.kill(ws[0]["pid"], signal.SIGCONT)
        # it comes back with its next heartbeat (re-registering by itself)
        srv.wait_workers(1, timeout=30)
        assert "smollm2" in {m["id"] for m in httpx.get(f"{srv.base_url}/v1/models").json()["data"]}
