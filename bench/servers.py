"""The processes a benchmark run starts: gateways, the peer server, measuring agents.

Every one is a real subprocess on 127.0.0.1 with an ephemeral port, its output in a
log file under the run's output folder; ``RssSampler`` watches their memory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

__all__ = ["free_port", "Proc", "Gateway", "PeerServer", "BareServer", "Agent", "RssSampler", "ROOT"]

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A subprocess in its own session, stdout/stderr to ``log``."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None, pipe: bool = False) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe else self._log, stderr=self._log,
            start_new_session=True, text=pipe,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.log_path.name} exited ({self.popen.returncode}):\n{self.tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()


def _wait(url: str, proc: Proc, timeout: float, ok: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check()
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200 and (ok is None or ok(r.json())):
                return r.json()
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready in {timeout}s:\n{proc.tail()}")


class Gateway:
    """``gpt-server serve`` (controller + gateway in one process, one process per worker)."""

    def __init__(self, models: list[dict[str, Any]], out: Path, name: str, env: dict[str, str] | None = None) -> None:
        self.port, cport = free_port(), free_port()
        self.controller = f"http://127.0.0.1:{cport}"
        cfg = {
            "serve_args": {"host": "127.0.0.1", "port": self.port},
            "controller_args": {"host": "127.0.0.1", "port": cport, "dispatch_method": "shortest_queue"},
            "model_worker_args": {"host": "127.0.0.1", "controller_address": self.controller, "heartbeat_interval": 1.0},
            "models": models,
        }
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.n_workers = sum(len(next(iter(m.values()))["workers"]) for m in models)
        self.proc = Proc([sys.executable, "-m", "gpt_server.cli", "serve", "-c", str(path)], out / f"{name}.log", env)
        self.workers: list[dict[str, Any]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 180.0) -> None:
        self.workers = _wait(
            f"{self.controller}/controller/workers", self.proc, timeout,
            lambda ws: len(ws) >= self.n_workers and all(w["healthy"] for w in ws),
        )
        _wait(f"{self.base_url}/health", self.proc, timeout)

    def pids(self) -> dict[str, int]:
        out = {"gateway": self.proc.pid}
        for w in self.workers:
            if w.get("pid") and w["pid"] != self.proc.pid:  # in_process workers are in the gateway's RSS
                out[f"worker:{w['model_name']}:{w.get('replica', 0)}"] = w["pid"]
        return out

    def stop(self) -> None:
        self.proc.stop()


class PeerServer:
    """``python -m llama_cpp.server`` on the same GGUF and thread count (the peer)."""

    def __init__(self, model_path: str, n_threads: int, n_ctx: int, out: Path) -> None:
        self.port = free_port()
        args = [
            sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--model_alias", "peer",
            "--host", "127.0.0.1", "--port", str(self.port), "--n_threads", str(n_threads),
            "--n_threads_batch", str(n_threads), "--n_ctx", str(n_ctx), "--verbose", "False",
            # by default it aborts the running stream when another request arrives: queue instead
            "--interrupt_requests", "False",
        ]
        self.proc = Proc(args, out / "peer_llama_cpp_server.log")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 120.0) -> None:
        _wait(f"{self.base_url}/v1/models", self.proc, timeout)

    def pids(self) -> dict[str, int]:
        return {"peer": self.proc.pid}

    def stop(self) -> None:
        self.proc.stop()


class BareServer:
    """``python -m bench.bare``: the same in-process engine behind a bare HTTP server (the floor)."""

    def __init__(self, engine_args: list[str], out: Path, name: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.proc = Proc([sys.executable, "-m", "bench.bare", "--port", str(self.port), *engine_args], out / f"{name}.log", env)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 120.0) -> None:
        _wait(f"{self.base_url}/", self.proc, timeout)

    def pids(self) -> dict[str, int]:
        return {"bare": self.proc.pid}

    def stop(self) -> None:
        self.proc.stop()


class Agent:
    """A measuring process (bench.agent) for one target; rounds go over its stdin/stdout."""

    def __init__(self, cfg: dict[str, Any], out: Path, name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.proc = Proc([sys.executable, "-m", "bench.agent", json.dumps(cfg)], out / f"agent_{name}.log", env, pipe=True)
        self._ready = False

    def _readline(self) -> dict[str, Any]:
        assert self.proc.popen.stdout is not None
        line = self.proc.popen.stdout.readline()
        if not line:
            self.proc.popen.wait(5)
            raise RuntimeError(f"agent {self.name} exited:\n{self.proc.tail()}")
        return json.loads(line)

    def wait(self) -> None:
        if not self._ready:
            self._readline()
            self._ready = True

    def round(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.wait()
        assert self.proc.popen.stdin is not None
        self.proc.popen.stdin.write(json.dumps(spec) + "\n")
        self.proc.popen.stdin.flush()
        return self._readline()

    def pids(self) -> dict[str, int]:
        return {f"agent:{self.name}": self.proc.pid}

    def stop(self) -> None:
        if self.proc.popen.stdin is not None and self.proc.popen.poll() is None:
            self.proc.popen.stdin.close()
            try:
                self.proc.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.proc.stop()


def _cpu_s(pid: int) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def _rss_mb(pid: int) -> float | None:
    """RSS of one process (not its children: workers are listed on their own), in MiB."""
    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except psutil.Error:
        return None


class RssSampler:
    """Idle RSS now, then the peak RSS while ``start()``…``stop()`` runs (polls every 0.2 s),
    and the CPU seconds each process used in between."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.idle = {k: _rss_mb(p) for k, p in pids.items()}
        self.cpu0 = {k: _cpu_s(p) for k, p in pids.items()}
        self.cpu_last: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            for k, p in list(self.pids.items()):
                c = _cpu_s(p)
                if c is not None:
                    self.cpu_last[k] = c
                v = _rss_mb(p)
                if v is not None and v > self.peak.get(k, 0.0):
                    self.peak[k] = v

    def add(self, pids: dict[str, int]) -> None:
        """Watch more processes (their idle RSS is taken now)."""
        self.idle.update({k: _rss_mb(p) for k, p in pids.items()})
        self.cpu0.update({k: _cpu_s(p) for k, p in pids.items()})
        self.pids = {**self.pids, **pids}

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, dict[str, float | None]]:
        self._stop.set()
        self._thread.join(2)
        out: dict[str, dict[str, float | None]] = {}
        for k, p in self.pids.items():
            c0, c1 = self.cpu0.get(k), _cpu_s(p)
            c1 = self.cpu_last.get(k) if c1 is None else c1  # exited already: its last reading
            cpu = None if c0 is None or c1 is None else round(c1 - c0, 3)
            out[k] = {"idle_mb": self.idle.get(k), "load_peak_mb": self.peak.get(k), "cpu_s": cpu}
        return out
