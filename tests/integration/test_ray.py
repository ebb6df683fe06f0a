"""cluster.backend: ray on a real two-node Ray cluster on 127.0.0.1 (no fakes): replicas as actors
on different nodes, a node lost under streaming load and re-placed when it returns, scaling as
actor creation/removal, and a teardown that leaves no Ray process or port behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ARTIFACTS, base_config, free_port, served, smollm_entry

pytestmark = pytest.mark.timeout(300)

RAY_BIN = Path(sys.executable).with_name("ray")
NODE_ENV = {  # a lost node is noticed in ~2 s instead of ~30 s; no usage report
    "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4", "RAY_USAGE_STATS_ENABLED": "0",
}


class RayNodes:
    """``ray start`` processes on 127.0.0.1 under a private temp dir, stopped by pid."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="gsr-", dir="/tmp")  # short: Ray's unix sockets live in it
        self.port = free_port()
        self.dashboard_port = free_port()  # the minimal dashboard still starts (state API); not on 8265
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **NODE_ENV}
        ARTIFACTS.mkdir(exist_ok=True)
        self.log = (ARTIFACTS / "ray_nodes.log").open("a")

    def _start(self, args: list[str]) -> None:
        common = [
            "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", str(80 * 1024 * 1024),
            "--disable-usage-stats",
        ]
        r = subprocess.run([str(RAY_BIN), "start", *args, *common], env=self.env, stdout=self.log, stderr=subprocess.STDOUT, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} exited with {r.returncode} (see test-artifacts/ray_nodes.log)")

    def start_head(self) -> None:
        self._start([
            "--head", "--port", str(self.port), "--include-dashboard=false", "--dashboard-port", str(self.dashboard_port),
            "--temp-dir", self.temp_dir,
            "--resources", json.dumps({"node_a": 1}),
        ])

    def start_b(self) -> None:
        # two logical GPUs (Ray only counts them): the placement of a `gpus: [0, 1]` replica is checked
        self._start(["--address", self.address, "--resources", json.dumps({"node_b": 1}), "--num-gpus", "2"])

    def pids(self, *words: str) -> list[int]:
        """Our Ray processes: those whose command line names our temp dir or GCS port."""
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            ours = self.temp_dir in cmd or re.search(rf"gcs[-_]address=[\d.]+:{self.port}\b", cmd) is not None
            if ours and "pytest" not in cmd and all(w in cmd for w in words):
                out.append(int(d))
        return out

    def kill_raylet(self, resource: str) -> int:
        (pid,) = [p for p in self.pids("raylet") if resource in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
                  and "/raylet" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace").split("\0")[0]]
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> list[int]:
        """Kill every process of this cluster; the ones still alive after 10 s."""
        for _ in range(3):
            for p in self.pids():
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        deadline = time.monotonic() + 10
        while (left := self.pids()) and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.log.close()
        return left


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def ray_nodes() -> Iterator[RayNodes]:
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("Ray cannot start: ray is not installed (pip install gpt-server[ray])")
    nodes = RayNodes()
    try:
        try:
            nodes.start_head()
            nodes.start_b()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"Ray cannot start here: {exc}")
        yield nodes
    finally:
        left = nodes.stop()
        assert not left, f"stray Ray processes after teardown: {left}"
        assert _port_free(nodes.port) and _port_free(nodes.dashboard_port), "a Ray port is still bound after teardown"


def _cluster(srv: Any, nodes: RayNodes, *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "gpt_server.cli", "cluster", *args, "-c", str(srv.config_path), "--ray", nodes.address],
        capture_output=True, text=True, timeout=120, env=nodes.env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _status(srv: Any, nodes: RayNodes) -> dict[str, Any]:
    return json.loads(_cluster(srv, nodes, "status", "--json"))


def _placement(status: dict[str, Any]) -> dict[str, str]:
    """replica name → the custom resource (node_a / node_b) of the node its live actor is on."""
    node_res = {n["node_id"]: next((k for k in n["resources"] if k in ("node_a", "node_b")), "?") for n in status["nodes"] if n["alive"]}
    return {r["name"]: node_res.get(r["node_id"], "?") for r in status["replicas"] if r["state"] == "ALIVE"}


def _stream(base_url: str, results: list[dict[str, Any]], max_tokens: int = 120) -> None:
    body = {
        "model": "smollm2", "messages": [{"role": "user", "content": "Write a long story about a ship."}],
        "max_tokens": max_tokens, "stream": True, "temperature": 1.0, "logit_bias": {"2": -100},
    }
    out: dict[str, Any] = {"status": None, "events": 0, "error": None, "done": False}
    results.append(out)  # updated as the stream goes
    try:
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as r:
            out["status"] = r.status_code
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    out["done"] = True
                elif line.startswith("data: "):
                    ev = json.loads(line[6:])
                    out["events"] += 1
                    if "error" in ev:
                        out["error"] = ev["error"]
    except httpx.HTTPError as exc:
        out["error"] = f"transport: {exc!r}"


def _ask(base_url: str) -> int:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    try:
        return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60).status_code
    except httpx.HTTPError:
        return -1


def _wait(cond: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout}s")


def test_replicas_as_actors_survive_node_loss_and_scale(ray_nodes: RayNodes, tmp_path: Path) -> None:
    cfg = base_config(models=[smollm_entry(replicas=2, n_threads=1)])
    cfg["cluster"] = {"backend": "ray", "address": ray_nodes.address, "namespace": f"t{os.getpid()}"}
    with served(cfg, tmp_path, "ray_cluster", 2, timeout=150) as srv:
        # (1) one replica per node, as Ray placed them (each node has room for one 1-CPU replica)
        placement = _placement(_status(srv, ray_nodes))
        assert sorted(placement) == ["smollm2#0", "smollm2#1"], placement
        assert sorted(placement.values()) == ["node_a", "node_b"], placement
        workers = srv.workers()
        assert len({w["pid"] for w in workers}) == 2
        text = _cluster(srv, ray_nodes, "status")
        assert "smollm2#0" in text and "ALIVE" in text

        # (2) streaming load while node_b's raylet is killed
        models_seen: list[bool] = []
        stop = threading.Event()

        def poll_models() -> None:
            while not stop.is_set():
                try:
                    ids = {m["id"] for m in httpx.get(f"{srv.base_url}/v1/models", timeout=10).json()["data"]}
                    models_seen.append("smollm2" in ids)
                except httpx.HTTPError:
                    models_seen.append(False)
                time.sleep(0.2)

        poller = threading.Thread(target=poll_models, daemon=True)
        poller.start()
        streams: list[dict[str, Any]] = []
        inflight = [threading.Thread(target=_stream, args=(srv.base_url, streams, 400)) for _ in range(4)]
        for t in inflight:
            t.start()
        _wait(lambda: len(streams) == 4 and all(s["events"] >= 3 for s in streams), 60, "every stream produces tokens")
        t_kill = time.monotonic()
        ray_nodes.kill_raylet("node_b")
        for t in inflight:
            t.join(90)
        after = [_ask(srv.base_url) for _ in range(6)]
        errored = [s for s in streams if s["error"]]
        assert len(streams) == 4 and all(s["status"] == 200 and s["done"] for s in streams), streams
        assert errored, f"no stream was on the lost node: {streams}"
        assert all(s["events"] >= 3 for s in errored), errored  # they were streaming when the node went
        assert after == [200] * 6, after
        _wait(lambda: len(srv.workers()) == 1, 30, "the lost worker leaves the controller's list")

        # the node comes back: Ray places the lost replica there again
        t_back = time.monotonic()
        ray_nodes.start_b()
        _wait(lambda: len(ws := srv.workers()) == 2 and all(w["healthy"] for w in ws), 120, "the lost replica registers again")
        replicated, after_back = time.monotonic() - t_kill, time.monotonic() - t_back
        stop.set()
        poller.join(5)
        placement = _placement(_status(srv, ray_nodes))
        assert sorted(placement.values()) == ["node_a", "node_b"], placement
        assert models_seen and all(models_seen), f"/v1/models dropped the model {models_seen.count(False)} time(s)"
        print(
            f"\nray failover: node lost -> fully replicated in {replicated:.1f}s ({after_back:.1f}s after the node "
            f"returned); streams errored {len(errored)}/4 "
            f"(all ended with [DONE]); requests after the loss failed {sum(c != 200 for c in after)}/6; "
            f"/v1/models polls {len(models_seen)}, without the model 0"
        )

        # (3) scaling is actor removal and creation
        assert "-smollm2#1" in _cluster(srv, ray_nodes, "scale", "smollm2", "1")
        assert sorted(_placement(_status(srv, ray_nodes))) == ["smollm2#0"]
        _wait(lambda: len(srv.workers()) == 1, 30, "the removed replica leaves the controller's list")
        assert _ask(srv.base_url) == 200
        # the CLI returns once the new actor is up (it used to exit as soon as Ray had the name, and
        # an exit before Ray's core worker sent the creation task left the actor dead)
        assert "+smollm2#1 ALIVE" in _cluster(srv, ray_nodes, "scale", "smollm2", "2")
        _wait(lambda: len(ws := srv.workers()) == 2 and all(w["healthy"] for w in ws), 90, "the new replica registers")
        assert sorted(_placement(_status(srv, ray_nodes))) == ["smollm2#0", "smollm2#1"]
        # a crashed worker takes its actor down and Ray restarts the actor (max_restarts)
        victim = srv.workers()[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        _wait(
            lambda: len(ws := srv.workers()) == 2 and all(w["healthy"] for w in ws) and victim not in {w["pid"] for w in ws},
            90, "the crashed replica is restarted by Ray",
        )
        restarts = {r["name"]: r["restarts"] for r in _status(srv, ray_nodes)["replicas"] if r["state"] == "ALIVE"}
        assert sorted(restarts) == ["smollm2#0", "smollm2#1"] and max(restarts.values()) >= 1, restarts
        bad = subprocess.run(
            [sys.executable, "-m", "gpt_server.cli", "cluster", "scale", "smollm2", "100000", "-c", str(srv.config_path),
             "--ray", ray_nodes.address], capture_output=True, text=True, timeout=60, env=ray_nodes.env,
        )
        assert bad.returncode == 2 and "between 0 and 256" in bad.stderr
        bad = subprocess.run(
            [sys.executable, "-m", "gpt_server.cli", "cluster", "scale", "smollm2", "2", "--wait", "1e9", "-c",
             str(srv.config_path), "--ray", ray_nodes.address], capture_output=True, text=True, timeout=60, env=ray_nodes.env,
        )
        assert bad.returncode == 2 and "between 0 and 3600" in bad.stderr
    # (4) serve's shutdown removed its actors (the fixture then checks no Ray process is left)
    assert _placement(_status(srv, ray_nodes)) == {}


GPU_PLACEMENT = """
import json, sys
import ray
from gpt_server.cluster.ray import _actor_options, connect
from gpt_server.config import parse_config
from ray.util import placement_group_table
entry = {"tp": {"model_config": {"model_name_or_path": "x.gguf"}, "work_mode": "llama_cpp", "workers": [{"gpus": [0, 1]}]}}
cfg = parse_config({"models": [entry], "cluster": {"address": sys.argv[1], "namespace": "gpu-check"}}, source="t")
connect(cfg.cluster)
opts = _actor_options(cfg.models[0], 0, None)

@ray.remote
def where():
    ctx = ray.get_runtime_context()
    return {"gpus": ray.get_gpu_ids(), "node": ctx.get_node_id()}

got = ray.get(where.options(**opts).remote(), timeout=60)
pg = opts["scheduling_strategy"].placement_group
table = placement_group_table(pg)
node_b = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node_b" in n["Resources"]]
print(json.dumps({"got": got, "strategy": table["strategy"], "bundles": table["bundles"], "node_b": node_b}))
"""


def test_gpu_replica_is_one_strict_pack_bundle(ray_nodes: RayNodes) -> None:
    """``workers: [{gpus: [0, 1]}]`` → one placement-group bundle of 2 GPUs (STRICT_PACK) on a node
    that has them; the actor options are the ones serve uses (node_b declares two logical GPUs)."""
    r = subprocess.run(
        [sys.executable, "-c", GPU_PLACEMENT, ray_nodes.address], capture_output=True, text=True, timeout=120, env=ray_nodes.env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["strategy"] == "STRICT_PACK" and len(out["bundles"]) == 1, out
    assert out["bundles"]["0"]["GPU"] == 2.0, out  # JSON keys are strings
    assert len(out["got"]["gpus"]) == 2 and out["got"]["node"] in out["node_b"], out
