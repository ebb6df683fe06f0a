"""The managed engine-server machinery (the code vLLM/SGLang/LMDeploy/TRT-LLM share), for real.

``work_mode: llama_cpp_server`` starts ``python -m llama_cpp.server`` as the worker's child
through exactly the code path of ``work_mode: vllm``: launch command, free loopback port,
process group, health wait, restart on crash, stop with the worker. ``model_config.python``
points at a wrapper interpreter that takes a few seconds to start (a slow engine start).
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gpt_server.backends.base import BackendSpec
from gpt_server.backends.engine_process import EngineStartError
from gpt_server.backends.relay.backend import EngineServerBackend
from gpt_server.config import parse_config, resolve_model_path
from tests.helpers import MODEL_PATH, WEATHER_TOOL, Server, base_config, free_port, served

MSG = [{"role": "user", "content": "Say hello."}]
SLOW_START_S = 3


def engine_pids(port: int) -> list[int]:
    """Processes whose command line holds ``--port <port>`` (the engine and its group)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # ``-m llama_cpp.server``, or the ``-c`` that starts it without AMX buffers (llama_cpp/buffers.py)
        if any(b"llama_cpp.server" in a for a in argv) and b"--port" in argv and str(port).encode() in argv:
            out.append(int(d.name))
    return out


def wrapper(tmp: Path, name: str, body: str) -> str:
    """An executable that stands in for the engine's interpreter."""
    path = tmp / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def engine_entry(name: str, python: str, port: int, **extra: object) -> dict:
    mc = {"model_name_or_path": MODEL_PATH, "n_ctx": 512, "n_threads": 1, "python": python,
          "engine_port": port, "startup_timeout": 60, **extra}
    return {name: {"model_config": mc, "work_mode": "llama_cpp_server", "device": "cpu", "workers": [{"gpus": []}]}}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("relay_engine")


@pytest.fixture(scope="module")
def engine_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(tmp: Path, engine_port: int) -> Iterator[Server]:
    slow = wrapper(tmp, "slow-python", f'echo "engine wrapper: warming up"\nsleep {SLOW_START_S}\nexec {sys.executable} "$@"')
    cfg = base_config(models=[engine_entry("managed", slow, engine_port)])
    with served(cfg, tmp, "relay_engine", 1, timeout=120) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=60)


def test_slow_start_then_serves(server: Server, client: openai.OpenAI, engine_port: int) -> None:
    assert server.ready_after >= SLOW_START_S
    assert len(engine_pids(engine_port)) == 1
    r = client.chat.completions.create(model="managed", messages=MSG, max_tokens=8, temperature=0)
    assert r.choices[0].message.content and r.model == "managed"
    chunks = [c for c in client.chat.completions.create(model="managed", messages=MSG, max_tokens=8, stream=True)]
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 1
    # the engine's output reaches the worker log
    assert "engine wrapper: warming up" in server.proc.new_log()


def test_engine_api_key_is_not_on_its_command_line(server: Server, engine_port: int) -> None:
    """The key only the worker may use travels in the engine's environment (``API_KEY`` for
    llama_cpp.server), not on its command line, which every user of the host can read."""
    (pid,) = engine_pids(engine_port)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert not any(a.startswith(b"gs-") or b"api_key" in a or b"api-key" in a for a in argv), argv
    env = dict(line.split(b"=", 1) for line in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in line)
    key = env[b"API_KEY"].decode()
    assert key.startswith("gs-") and b"GPT_SERVER_SECRET" not in env
    # the engine still demands it
    url = f"http://127.0.0.1:{engine_port}/v1/models"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200


def test_guided_output_in_llama_cpp_grammar_and_the_rest_refused(client: openai.OpenAI) -> None:
    """llama.cpp's server takes GBNF: guided_choice and guided_grammar become its ``grammar``,
    tool_choice required a JSON schema of the calls; a regex it cannot take is a 400 naming it."""
    r = client.chat.completions.create(model="managed", messages=MSG, max_tokens=8,
                                       extra_body={"guided_choice": ["alpha", 'say "beta"']})
    assert r.choices[0].message.content in ("alpha", 'say "beta"')
    r = client.chat.completions.create(model="managed", messages=MSG, max_tokens=8,
                                       extra_body={"guided_grammar": 'root ::= ("yes" | "no") " " [0-9]'})
    assert re.fullmatch(r"(yes|no) [0-9]", r.choices[0].message.content or ""), r.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="managed", messages=MSG, max_tokens=8, extra_body={"guided_regex": "a+"})
    assert ei.value.body["param"] == "guided_regex" and ei.value.body["code"] == "unsupported_parameter"
    # legacy completions: the same translation (before: the guided_* keys were dropped at the gateway)
    c = client.completions.create(model="managed", prompt="Say:", max_tokens=8, extra_body={"guided_choice": ["alpha", "gamma"]})
    assert c.choices[0].text in ("alpha", "gamma"), c.choices[0].text
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model="managed", prompt="Say:", max_tokens=8, extra_body={"guided_regex": "a+"})
    assert ei.value.body["param"] == "guided_regex"
    # tool_choice required: the relay constrains llama.cpp to a JSON schema of the calls
    r = client.chat.completions.create(model="managed", messages=MSG, max_tokens=60, tools=[WEATHER_TOOL],
                                       tool_choice="required", parallel_tool_calls=False, temperature=0)
    (call,) = r.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and r.choices[0].finish_reason == "tool_calls"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_engine_crash_restarts_and_serves_again(server: Server, client: openai.OpenAI, engine_port: int) -> None:
    (old,) = engine_pids(engine_port)
    stream = client.completions.create(model="managed", prompt="1, 2, 3, 4,", max_tokens=400, stream=True)
    first = next(iter(stream))
    assert first.choices
    os.kill(old, signal.SIGKILL)  # the engine dies mid-stream
    with pytest.raises(openai.APIError) as ei:
        for _ in stream:
            pass
    assert "mid-stream" in str(ei.value) or "closed the stream" in str(ei.value)
    saw_unhealthy = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        ws = server.workers()
        if ws and not ws[0]["healthy"]:
            saw_unhealthy = True
        pids = engine_pids(engine_port)
        if saw_unhealthy and pids and pids != [old] and ws and ws[0]["healthy"]:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"engine did not come back:\n{server.proc.log_text()}")
    assert saw_unhealthy
    r = client.chat.completions.create(model="managed", messages=MSG, max_tokens=8)
    assert r.choices[0].message.content
    assert "restarting it" in server.proc.new_log()


def test_stopping_the_server_kills_the_engine_group(server: Server, engine_port: int) -> None:
    assert engine_pids(engine_port)
    server.stop()
    deadline = time.monotonic() + 20
    while engine_pids(engine_port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert engine_pids(engine_port) == []


def _backend(tmp: Path, python: str, **extra: object) -> EngineServerBackend:
    cfg = parse_config({"models": [engine_entry("b", python, free_port(), **extra)]})
    entry = cfg.models[0]
    return EngineServerBackend(BackendSpec(entry=entry, model_path=resolve_model_path(MODEL_PATH), n_threads=1))


def test_startup_timeout_shows_engine_log_and_kills_it(tmp: Path) -> None:
    hang = wrapper(tmp, "hang-python", 'echo "loading shards 1/9"\nexec sleep 60')
    backend = _backend(tmp, hang, startup_timeout=2)
    t0 = time.monotonic()
    with pytest.raises(EngineStartError) as ei:
        backend.load()
    assert time.monotonic() - t0 < 30
    assert "startup_timeout" in str(ei.value) and "loading shards 1/9" in str(ei.value)
    assert backend.process is not None and backend.process.popen is not None
    assert backend.process.popen.poll() is not None  # the hung engine was killed


def test_engine_that_exits_at_start_reports_its_error(tmp: Path) -> None:
    backend = _backend(tmp, sys.executable, engine_args=["--no_such_flag", "1"])
    with pytest.raises(EngineStartError) as ei:
        backend.load()
    msg = str(ei.value)
    assert "exited with code" in msg and "no_such_flag" in msg
