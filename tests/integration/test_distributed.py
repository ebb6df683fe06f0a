"""Controller, workers and gateway as separate processes; a controller restart."""

from __future__ import annotations

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
