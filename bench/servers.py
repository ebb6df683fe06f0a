"""The processes a benchmark run starts: gateways, the peer server, measuring agents.

Every one is a real subprocess on 127.0.0.1 with an ephemeral port, its output in a
log file under the run's output folder; ``RssSampler`` watches their memory.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from gpt_server.backends.llama_cpp.buffers import server_argv, use_extra_buffers
from gpt_server.config import ModelWorkerArgs
from gpt_server.procs import free_port

_DEFAULT_HEARTBEAT = ModelWorkerArgs.model_fields["heartbeat_interval"].default

__all__ = ["free_port", "Proc", "ServeProcess", "serve_config", "Gateway", "PeerServer", "LlamaServer", "BareServer", "Agent", "RssSampler", "ROOT"]

ROOT = Path(__file__).resolve().parent.parent
SECRET_HEADER = "X-GPT-Server-Secret"


class Proc:
    """A subprocess in its own session, stdout/stderr to ``log`` (appended to)."""

    def __init__(
        self, args: list[str], log: Path, env: dict[str, str] | None = None, pipe: bool = False, cwd: Path | None = None
    ) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self._log_start = self._log.tell()
        self.popen = subprocess.Popen(
            args, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe else self._log, stderr=self._log,
            start_new_session=True, text=pipe,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_text(self, chars: int = 8000) -> str:
        """The end of the log file."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def new_log(self) -> str:
        """What this process wrote (the log file may hold earlier runs)."""
        return self.log_path.read_bytes()[self._log_start :].decode(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.log_path.name} exited ({self.popen.returncode}):\n{self.log_text(4000)}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL to the whole session after ``timeout``; the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


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
    raise TimeoutError(f"{url} not ready in {timeout}s:\n{proc.log_text(4000)}")


def serve_config(
    models: list[dict[str, Any]],
    *,
    api_keys: str | None = None,
    dispatch: str = "shortest_queue",
    heartbeat_interval: float = 1.0,
) -> dict[str, Any]:
    """A ``gpt-server serve`` config on 127.0.0.1 with free ports for the gateway and controller."""
    serve: dict[str, Any] = {"host": "127.0.0.1", "port": free_port()}
    if api_keys:
        serve["api_keys"] = api_keys
    cport = free_port()
    return {
        "serve_args": serve,
        "controller_args": {"host": "127.0.0.1", "port": cport, "dispatch_method": dispatch},
        "model_worker_args": {
            "host": "127.0.0.1",
            "controller_address": f"http://127.0.0.1:{cport}",
            "heartbeat_interval": heartbeat_interval,
        },
        "models": models,
    }


class ServeProcess:
    """``gpt-server serve -c <config_path>`` with the given config (controller + gateway in one
    process, one process per worker replica); a context manager that stops it."""

    def __init__(
        self,
        config: dict[str, Any],
        config_path: Path,
        log: Path,
        env: dict[str, str] | None = None,
        *,
        config_text: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.config = config
        self.port = config["serve_args"]["port"]
        self.controller_port = config["controller_args"]["port"]
        keys = config["serve_args"].get("api_keys")
        self.api_key = (keys.split(",")[0] if isinstance(keys, str) else (keys or [None])[0]) if keys else None
        self.config_path = config_path
        self.config_path.write_text(config_text if config_text is not None else yaml.safe_dump(config))
        # the internal secret: the config's, else the one given in ``env``, else one made here and
        # passed in the environment (GPT_SERVER_SECRET="" in ``env``: none, serve makes its own)
        env = dict(env or {})
        if "GPT_SERVER_SECRET" not in env:
            env["GPT_SERVER_SECRET"] = os.environ.get("GPT_SERVER_SECRET") or secrets.token_urlsafe(24)
        self.secret: str | None = (config.get("controller_args") or {}).get("secret") or env["GPT_SERVER_SECRET"] or None
        self.expected_workers = sum(len(next(iter(m.values()))["workers"]) for m in config["models"])
        self.ready_workers: list[dict[str, Any]] = []
        self.proc = Proc([sys.executable, "-m", "gpt_server.cli", "serve", "-c", str(config_path)], log, env, cwd=cwd)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def internal_headers(self) -> dict[str, str]:
        """What the controller's and the workers' routes want (the internal secret)."""
        return {SECRET_HEADER: self.secret} if self.secret else {}

    def workers(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.controller_url}/controller/workers", headers=self.internal_headers(), timeout=5).json()

    def wait_workers(self, count: int | None = None, timeout: float = 180.0) -> list[dict[str, Any]]:
        """Wait until ``count`` workers (default: all configured) are registered and healthy
        and the gateway's /health is 200; the workers then."""
        want = self.expected_workers if count is None else count
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"server exited:\n{self.proc.log_text()}")
            try:
                ws = self.workers()
                if len(ws) >= want and all(w["healthy"] for w in ws):
                    r = httpx.get(f"{self.base_url}/health", timeout=5)
                    if r.status_code == 200:
                        self.ready_workers = ws
                        return ws
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.proc.log_text()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        return self.proc.stop(timeout)


class Gateway(ServeProcess):
    """``gpt-server serve`` for a benchmark run, its config and log in the run's folder."""

    def __init__(self, models: list[dict[str, Any]], out: Path, name: str, env: dict[str, str] | None = None,
                 root: Path = ROOT) -> None:
        """``root``: the checkout whose ``gpt_server`` serves (``python -m`` from there). Its
        workers heartbeat at the default interval (the tests' configs beat every second): what
        an idle process does beside a decode counts on two cores."""
        config = serve_config(models, heartbeat_interval=_DEFAULT_HEARTBEAT)
        super().__init__(config, out / f"{name}.yaml", out / f"{name}.log", env, cwd=root)

    def wait(self, timeout: float = 180.0) -> None:
        self.wait_workers(timeout=timeout)

    def pids(self) -> dict[str, int]:
        out = {"gateway": self.proc.pid}
        for w in self.ready_workers:
            if w.get("pid") and w["pid"] != self.proc.pid:  # in_process workers are in the gateway's RSS
                out[f"worker:{w['model_name']}:{w.get('replica', 0)}"] = w["pid"]
        return out


class _PeerProcess:
    """A peer OpenAI-compatible server process on ``self.port`` (``/v1/models`` says it is up)."""

    port: int
    proc: Proc
    name: str = "peer"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 120.0) -> None:
        _wait(f"{self.base_url}/v1/models", self.proc, timeout)

    def pids(self) -> dict[str, int]:
        return {self.name: self.proc.pid}

    def stop(self) -> None:
        self.proc.stop()


class PeerServer(_PeerProcess):
    """``python -m llama_cpp.server`` on the same GGUF and thread count (the peer)."""

    def __init__(self, model_path: str, n_threads: int, n_ctx: int, out: Path) -> None:
        self.port = free_port()
        args = [  # extra weight buffers as our engine's (off on AMX CPUs: gpt_server.backends.llama_cpp.buffers)
            *server_argv(sys.executable, None), "--model", model_path, "--model_alias", "peer",
            "--host", "127.0.0.1", "--port", str(self.port), "--n_threads", str(n_threads),
            "--n_threads_batch", str(n_threads), "--n_ctx", str(n_ctx), "--verbose", "False",
            # by default it aborts the running stream when another request arrives: queue instead
            "--interrupt_requests", "False",
        ]
        self.proc = Proc(args, out / "peer_llama_cpp_server.log", cwd=ROOT)


class LlamaServer(_PeerProcess):
    """llama.cpp's own C++ ``llama-server`` on the same GGUF, threads and parallel slots (the anchor peer)."""

    name = "llama-server"

    def __init__(self, binary: str, model_path: str, n_threads: int, n_ctx: int, n_parallel: int, out: Path) -> None:
        self.port = free_port()
        args = [
            binary, "--model", model_path, "--alias", "llama-server", "--host", "127.0.0.1", "--port", str(self.port),
            "--threads", str(n_threads), "--threads-batch", str(n_threads), "--parallel", str(n_parallel),
            # the context is split between the slots: give each slot what one gateway sequence gets
            "--ctx-size", str(n_ctx * n_parallel), "--no-webui", "--log-disable",
        ]
        if not use_extra_buffers(None):  # as our engine (an AMX CPU: gpt_server.backends.llama_cpp.buffers)
            args.append("--no-repack")
        self.proc = Proc(args, out / "peer_llama_server.log", cwd=ROOT)


class BareServer:
    """``python -m bench.bare``: the same in-process engine behind a bare HTTP server (the floor)."""

    def __init__(self, engine_args: list[str], out: Path, name: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.proc = Proc(
            [sys.executable, "-m", "bench.bare", "--port", str(self.port), *engine_args], out / f"{name}.log", env, cwd=ROOT
        )

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
        self.proc = Proc(
            [sys.executable, "-m", "bench.agent", json.dumps(cfg)], out / f"agent_{name}.log", env, pipe=True, cwd=ROOT
        )
        self._ready = False

    def _readline(self) -> dict[str, Any]:
        assert self.proc.popen.stdout is not None
        line = self.proc.popen.stdout.readline()
        if not line:
            self.proc.popen.wait(5)
            raise RuntimeError(f"agent {self.name} exited:\n{self.proc.log_text(4000)}")
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
