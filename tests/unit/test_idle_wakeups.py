"""An idle server process wakes as little as it can: on two cores beside a running decode, every
wake-up takes a core from a compute thread (bench/README.md, thirteenth session). Our uvicorn
server's main loop wakes once a second (uvicorn's own ten times) yet sees an exit at once, and a
worker's heartbeat reads only its own process tree for its children's memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest
import uvloop
from starlette.types import Receive, Scope, Send

from gpt_server.web import serve
from gpt_server.web.serve import bind_socket, make_server
from gpt_server.worker import runtime
from gpt_server.worker.runtime import _descendants, process_memory
from tests.helpers import answer_lifespan


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_an_idle_server_ticks_once_a_second_and_exits_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main(seconds: float) -> tuple[int, float, list[Any]]:
        sock = bind_socket("127.0.0.1", 0)
        server = make_server(_app, sock, graceful=0)
        ticks = 0
        real = server.on_tick

        async def counted(counter: int) -> bool:
            nonlocal ticks
            ticks += 1
            return await real(counter)

        server.on_tick = counted  # type: ignore[method-assign]
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            assert not serving.done(), "the server did not start"
            await asyncio.sleep(0.01)
        ticks = 0
        await asyncio.sleep(seconds)  # mid-way through a tick's wait
        counted_ticks = ticks
        headers = list(server.server_state.default_headers)
        t0 = time.perf_counter()
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        return counted_ticks, time.perf_counter() - t0, headers

    ticks, _, headers = uvloop.run(main(2.3))
    assert 1 <= ticks <= 3, ticks  # uvicorn's loop: 23 in 2.3 s
    assert any(name == b"date" for name, _ in headers)  # refreshed at every tick, as uvicorn does once a second
    # an exit asked for mid-way through a tick's wait is seen at once, not at the tick's end
    monkeypatch.setattr(serve, "_TICK_S", 30.0)
    ticks, exit_s, _ = uvloop.run(main(0.5))
    assert ticks == 0 and exit_s < 5, (ticks, exit_s)  # uvicorn's shutdown itself: ~0.1 s


def _kill_group(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)  # a shell's background sleep too
    p.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/<pid>/task/<tid>/children is Linux's")
def test_a_workers_children_are_read_from_its_own_tree() -> None:
    # a child holding 64 MiB, and a shell with a grandchild: each in a process group of its own
    big = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; b = b'x' * (64 << 20); print('ready', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, start_new_session=True,
    )
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30"], start_new_session=True)
    try:
        assert big.stdout is not None and big.stdout.readline() == b"ready\n"
        groups = {big.pid, shell.pid}
        deadline = time.monotonic() + 10
        while True:  # the shell has forked its background sleep
            ours = sorted(p.pid for p in psutil.Process().children(recursive=True) if os.getpgid(p.pid) in groups)
            if len(ours) == 4:
                break
            assert time.monotonic() < deadline, ours
            time.sleep(0.05)
        # every descendant, as psutil finds them by reading every process on the host
        assert sorted(set(_descendants(os.getpid())) & set(ours)) == ours
        # the child's 64 MiB count where the children are asked for
        assert process_memory(with_children=True) - process_memory(with_children=False) > 60 << 20
    finally:
        _kill_group(big)
        _kill_group(shell)


def test_children_that_end_or_cannot_be_listed_do_not_lose_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process
    try:
        alone = process_memory(with_children=False)
        # a child that ended between the listing and its read is skipped; the rest still count
        monkeypatch.setattr(runtime, "_descendants", lambda pid: [gone.pid, child.pid])
        assert process_memory(with_children=True) > alone
        # no children file (another kernel, another system): psutil's way
        def unsupported(pid: int) -> list[int]:
            raise OSError("no children file")

        monkeypatch.setattr(runtime, "_descendants", unsupported)
        assert process_memory(with_children=True) > alone
    finally:
        _kill_group(child)
