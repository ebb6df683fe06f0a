"""A request's life on the server: its work stops when the client hangs up, and the drain
deadline of a shutdown ends it with an answer instead of a cut.

``HangupMiddleware`` is the one reader of ``receive`` once a request's body has been
read: our server tells it of the hang-up (``web.serve.ConnectionTap.on_hangup``), and under
another server a task waits on ``receive`` for ``http.disconnect``. A client that leaves before its response
has started (a non-streamed chat waiting for its last token, an embedding, an image job)
cancels the request's task, which closes the worker call behind it, so the engine stops.
Once the response has started, the response itself listens (``DisconnectWatch`` in a
stream); it reads the same hang-up from here.

At the drain deadline the server cancels what is still running with ``DRAIN_DEADLINE``
as the message (``web.serve``): a request that has not answered yet gets a 503 here, an
event stream ends with an error event and its done marker (``gateway.sse``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ServiceUnavailableError

if TYPE_CHECKING:
    from .serve import ConnectionTap

__all__ = ["DRAIN_DEADLINE", "HangupMiddleware", "is_drain_cancel", "shutdown_error"]

log = logging.getLogger("gpt_server")

DRAIN_DEADLINE = "gpt_server: the shutdown drain deadline passed"


def is_drain_cancel(exc: BaseException) -> bool:
    """Whether ``exc`` is the cancellation the server sends at its drain deadline."""
    return isinstance(exc, asyncio.CancelledError) and bool(exc.args) and exc.args[0] == DRAIN_DEADLINE


def shutdown_error() -> ServiceUnavailableError:
    return ServiceUnavailableError("the server shut down before this request finished", code="server_shutdown")


class _Watch:
    """``receive`` for the app: the body as it comes, then the hang-up; cancels ``task`` on a
    hang-up before the response has started. The hang-up is heard from our server
    (``ConnectionTap.on_hangup``), else from a task of its own that reads ``receive`` on."""

    def __init__(self, receive: Receive, task: asyncio.Task[Any], tap: ConnectionTap | None) -> None:
        self._receive = receive
        self._task = task
        self._tap = tap
        self._gone = asyncio.Event()
        self._listening = False  # the body is read; the hang-up is listened for
        self._watcher: asyncio.Task[None] | None = None
        self.started = False  # the response's status line was sent
        self.cancelled = False  # we cancelled the request's task

    async def receive(self) -> Message:
        if self._listening:  # the body is read: what is left to hear is the hang-up
            await self._gone.wait()
            return {"type": "http.disconnect"}
        msg = await self._receive()
        if msg["type"] == "http.disconnect":
            self._gone.set()
        elif not msg.get("more_body", False):
            self._listening = True
            if self._tap is None or not self._tap.on_hangup(self._hangup):
                self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return msg

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._hangup()

    def _hangup(self) -> None:
        self._gone.set()
        if not self.started and not self._task.done():
            self.cancelled = True
            self._task.cancel()

    def stop(self) -> None:
        if self._tap is not None:
            self._tap.off_hangup(self._hangup)
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()  # not awaited: nobody needs what it would read


class HangupMiddleware:
    """Cancel a request whose client disconnects before the response starts; answer 503
    (OpenAI shape) to one the drain deadline ends before it answered."""

    def __init__(self, app: ASGIApp) -> None:
        from .serve import connection_tap  # web.serve imports this module

        self.app = app
        self._tap = connection_tap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        watch = _Watch(receive, task, self._tap(scope))

        async def tracking_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                watch.started = True
            await send(msg)

        try:
            await self.app(scope, watch.receive, tracking_send)
        except asyncio.CancelledError as exc:
            if watch.cancelled:
                if task.uncancel() == 0:
                    return  # the client left: nobody to answer, the work behind it is stopped
                raise
            if is_drain_cancel(exc) and not watch.started and task.uncancel() == 0:
                body = orjson.dumps(shutdown_error().body())
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            raise
        finally:
            watch.stop()
