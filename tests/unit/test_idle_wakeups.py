"""An idle server process wakes as little as it can: on two cores beside a running decode, every
wake-up takes a core from a compute thread (bench/README.md, thirteenth session). Our uvicorn
server's main loop wakes once a second (uvicorn's own ten times) yet sees an exit at once, and a
worker's heartbeat reads only its own process tree for its children's memory."""

from __future__ import annotations

import asyncio
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

from gpt_server.web.serve import bind_socket, make_server
from gpt_server.worker.runtime import _descendants, process_memory
from tests.helpers import answer_lifespan


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_an_idle_server_ticks_once_a_second_and_exits_at_once() -> None:
    async def main() -> tuple[int, float, list[Any]]:
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
            await asyncio.sleep(0.01)
        ticks = 0
        await asyncio.sleep(2.3)  # mid-way through a tick's wait
        counted_ticks = ticks
        headers = list(server.server_state.default_headers)
        t0 = time.perf_counter()
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        return counted_ticks, time.perf_counter() - t0, headers

    ticks, exit_s, headers = uvloop.run(main())
    assert 1 <= ticks <= 3, ticks  # uvicorn's loop: 23 in 2.3 s
    assert exit_s < 0.6, exit_s  # not the rest of the second's wait (uvicorn's shutdown itself: ~0.1 s)
    assert any(name == b"date" for name, _ in headers)  # refreshed at every tick, as uvicorn does once a second


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/<pid>/task/<tid>/children is Linux's")
def test_a_workers_children_are_read_from_its_own_tree() -> None:
    # a child, and a shell with a grandchild: every descendant, as psutil finds by reading every process
    kids = [
        subprocess.Popen([sys.executable, "-c", "import time; b = b'x' * (64 << 20); time.sleep(30)"], start_new_session=True),
        subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30"], start_new_session=True),
    ]
    try:
        me = psutil.Process()
        deadline = time.monotonic() + 10
        while len(me.children(recursive=True)) < 4 or kids[0].poll() is not None:
            assert time.monotonic() < deadline, "the child processes did not start"
            time.sleep(0.05)
        time.sleep(0.5)  # the first child's 64 MiB are in memory
        assert sorted(_descendants(os.getpid())) == sorted(p.pid for p in me.children(recursive=True))
        # the first child's 64 MiB count where the children are asked for
        assert process_memory(with_children=True) - process_memory(with_children=False) > 60 << 20
    finally:
        for k in kids:
            os.killpg(k.pid, signal.SIGKILL)  # the shell's background sleep too
            k.wait()
