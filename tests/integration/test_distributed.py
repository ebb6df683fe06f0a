"""Controller, workers and gateway as separate processes; a controller restart."""

from __future__ import annotations

import json
import signal
import time

import httpx
import openai
import yaml

from tests.helpers import Proc, base_config, smollm_entry


def test_controller_restart_workers_reregister(tmp_path) -> None:  # noqa: ANN001
    cfg = base_config(models=[smollm_entry(replicas=2)])
    path = tmp_path / "dist.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ctrl_url = cfg["model_worker_args"]["controller_address"]
    gw_url = f"http://127.0.0.1:{cfg['serve_args']['port']}"
    procs: list[Proc] = []
    try:
        procs.append(Proc(["controller", "-c", str(path)], "dist_controller"))
        for i in range(2):
            procs.append(Proc(["worker", "-c", str(path), "--model", "smollm2", "--replica", str(i)], f"dist_worker{i}"))
        procs.append(Proc(["gateway", "-c", str(path), "--controller-address", ctrl_url], "dist_gateway"))

        def registered() -> int:
            try:
                return len(httpx.get(f"{ctrl_url}/controller/workers", timeout=2).json())
            except httpx.HTTPError:
                return -1

        def wait_registered(n: int, timeout: float) -> float:
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                if registered() >= n:
                    return time.monotonic() - t0
                time.sleep(0.05)
            raise AssertionError(f"only {registered()} workers registered after {timeout}s")

        wait_registered(2, 120)
        client = openai.OpenAI(base_url=f"{gw_url}/v1", api_key="x", max_retries=0, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        r = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert r.choices[0].message.content is not None

        # restart the controller: it forgets every worker
        procs[0].stop()
        assert registered() == -1
        procs[0] = Proc(["controller", "-c", str(path)], "dist_controller2")
        while registered() < 0:
            time.sleep(0.05)
        took = wait_registered(2, 10)
        interval = cfg["model_worker_args"]["heartbeat_interval"]
        assert took <= 2 * interval + 0.5, f"re-registration took {took:.2f}s"
        for _ in range(4):
            r = client.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
            assert r.choices[0].finish_reason in ("stop", "length")
    finally:
        for p in reversed(procs):
            p.stop()


def test_worker_advertises_reachable_address(tmp_path) -> None:  # noqa: ANN001
    cfg = base_config(models=[smollm_entry()])
    cfg["model_worker_args"]["host"] = "0.0.0.0"
    path = tmp_path / "adv.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ctrl_url = cfg["model_worker_args"]["controller_address"]
    env = {"GPT_SERVER_SECRET": "adv-secret"}  # a worker listening beyond loopback needs one
    auth = {"X-GPT-Server-Secret": "adv-secret"}
    procs = [Proc(["controller", "-c", str(path)], "adv_controller", env)]
    try:
        procs.append(Proc(["worker", "-c", str(path)], "adv_worker", env))
        deadline = time.monotonic() + 120
        ws: list = []
        while time.monotonic() < deadline and not ws:
            try:
                ws = httpx.get(f"{ctrl_url}/controller/workers", headers=auth, timeout=2).json()
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert ws, procs[-1].log_text()
        addr = ws[0]["address"]
        assert "0.0.0.0" not in addr
        assert httpx.get(f"{addr}/worker/health", headers=auth, timeout=5).status_code == 200
    finally:
        for p in reversed(procs):
            p.stop()


def test_standalone_worker_leaves_the_controller_before_draining(tmp_path) -> None:  # noqa: ANN001
    """SIGTERM to `gpt-server worker`: it is off the controller's list at once (no new work is
    sent to it) while the request it is running goes on to its end."""
    cfg = base_config(models=[smollm_entry()])
    path = tmp_path / "drain.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ctrl_url = cfg["model_worker_args"]["controller_address"]
    procs = [Proc(["controller", "-c", str(path)], "drain_controller")]
    try:
        procs.append(Proc(["worker", "-c", str(path)], "drain_worker"))
        deadline = time.monotonic() + 120
        ws: list = []
        while time.monotonic() < deadline and not ws:
            try:
                ws = httpx.get(f"{ctrl_url}/controller/workers", timeout=2).json()
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert ws, procs[-1].log_text()
        body = {"request_id": "drain", "model": "smollm2", "kind": "chat",
                "messages": [{"role": "user", "content": "Write a long story."}],
                "params": {"max_tokens": 120, "logit_bias": {"2": -100}}}
        events: list[dict] = []
        listed_after_term: list[int] = []
        with httpx.stream("POST", f"{ws[0]['address']}/worker/generate", json=body, timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                events.append(json.loads(line))
                if len(events) == 3:
                    procs[1].popen.send_signal(signal.SIGTERM)
                    t0 = time.monotonic()
                    while time.monotonic() - t0 < 1.0:
                        listed_after_term.append(len(httpx.get(f"{ctrl_url}/controller/workers", timeout=2).json()))
                        time.sleep(0.1)
        assert listed_after_term and listed_after_term[-1] == 0, listed_after_term  # gone within a second
        finish = [e for e in events if e["t"] == "finish"]
        assert finish and finish[0]["finish_reason"] == "length", events[-3:]  # the running request was not cut
        assert procs[1].popen.wait(30) == 0
    finally:
        for p in reversed(procs):
            p.stop()
