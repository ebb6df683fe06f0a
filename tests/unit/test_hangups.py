"""A client's hang-up before its answer cancels the request (``web.lifecycle.HangupMiddleware``),
served by our uvicorn protocol (``web.serve``) on a real socket: the server tells the request
directly (``ConnectionTap.on_hangup``), with no task per request listening on ``receive``, and a
request on a kept-alive connection stops listening once it is answered."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import uvloop
from starlette.types import Receive, Scope, Send

from gpt_server.web import lifecycle
from gpt_server.web.lifecycle import HangupMiddleware
from gpt_server.web.serve import bind_socket, connection_tap, make_server
from tests.helpers import answer_lifespan, wait_to_be_cancelled

REQUEST = b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"


def test_a_hang_up_cancels_the_request_without_a_listening_task() -> None:
    async def main() -> None:
        started, cancelled = asyncio.Event(), asyncio.Event()
        watchers: list[Any] = []
        taps: list[Any] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "lifespan":
                await answer_lifespan(receive, send)
                return
            await receive()  # the body
            taps.append(connection_tap(scope))
            if scope["path"] == "/quick":
                await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
                await send({"type": "http.response.body", "body": b"ok"})
                return
            await wait_to_be_cancelled(started, cancelled)

        real_watch = lifecycle._Watch.__init__

        def spy(self: Any, *a: Any) -> None:
            real_watch(self, *a)
            watchers.append(self)

        lifecycle._Watch.__init__ = spy  # type: ignore[method-assign]
        sock = bind_socket("127.0.0.1", 0)
        server = make_server(HangupMiddleware(app), sock, graceful=0)
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            port = sock.getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST.replace(b"/x", b"/quick"))  # answered: its listener is dropped
            assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
            writer.write(REQUEST)  # the same connection, a request that waits
            await asyncio.wait_for(started.wait(), 5)
            assert taps[0]._hangups is taps[1]._hangups and len(taps[1]._hangups.calls) == 1
            writer.close()  # the client leaves before any answer
            await asyncio.wait_for(cancelled.wait(), 5)
            assert [w._watcher for w in watchers] == [None, None] and [w.cancelled for w in watchers] == [False, True]
        finally:
            lifecycle._Watch.__init__ = real_watch  # type: ignore[method-assign]
            server.should_exit = True
            await asyncio.wait_for(serving, 10)
            with contextlib.suppress(OSError):  # the server may have closed it
                sock.close()

    uvloop.run(main())


def test_under_another_server_a_task_listens() -> None:
    """No ``ConnectionTap`` (httpx's ASGI transport, another server): the listening task, as before."""
    async def main() -> None:
        gone = asyncio.Event()
        seen: list[Any] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await receive()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(msg: Any) -> None:
            raise AssertionError("nothing is answered to a client that left")

        task = asyncio.ensure_future(HangupMiddleware(app)({"type": "http", "path": "/x"}, receive, send))
        await asyncio.sleep(0.05)
        gone.set()
        await asyncio.wait_for(task, 5)  # ends quietly: nobody to answer
        assert seen == ["cancelled"]

    uvloop.run(main())

