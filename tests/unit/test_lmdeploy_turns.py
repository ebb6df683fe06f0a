"""An interactive session's turn is always settled: also when its stream never started (a
client gone before the first chunk), the session is free for the next turn."""

from __future__ import annotations

import asyncio
from typing import Any

from gpt_server.gateway.routes.lmdeploy import _InteractiveStream, _session_lines, _Turn
from gpt_server.gateway.session_store import SessionStore
from gpt_server.web.responses import aclose_then


class _Run:
    closed = 0

    async def aclose(self) -> None:
        self.closed += 1

    async def translate(self, tr: Any) -> Any:  # never reached in this test
        yield []


def test_a_stream_closed_before_its_first_chunk_frees_the_session() -> None:
    store = SessionStore(10, 2**20, 2**16, 10, 60)
    s = store.begin("key", 7)
    assert s.busy
    run = _Run()
    turn = _Turn(run, store, s)  # type: ignore[arg-type]
    lines = _session_lines(run, _InteractiveStream(0), turn, [], True)  # type: ignore[arg-type]
    asyncio.run(aclose_then(lines, turn.close))  # what the response does when the client left early
    assert not s.busy and run.closed == 1
    again = store.begin("key", 7)  # the next turn is not refused with 409 session_busy
    assert again.busy
