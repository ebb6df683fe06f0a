"""Responses every app here uses: orjson JSON, streams that always close what feeds them
(and end with a status, an error body or a cut), and the one way to notice a hang-up."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import GatewayError, InternalError
from .serve import connection_tap

__all__ = [
    "error_response", "StreamAborted", "DisconnectWatch", "ClosingStreamingResponse", "aclose_then", "first_chunk", "FastJSONResponse",
]

log = logging.getLogger("gpt_server")


class StreamAborted(Exception):
    """A response body failed after its status line was sent: the response is cut (the
    server closes the connection), so the client sees an incomplete body, never a short
    one that looks complete."""


class DisconnectWatch:
    """``async with DisconnectWatch(receive) as client:`` — the block is cancelled as soon
    as the client disconnects, and then ends quietly with ``client.gone`` True.

    One task waits on ``receive()`` for ``http.disconnect`` meanwhile (no polling). Only its
    own cancellation is swallowed; any other (shutdown, a caller's timeout) goes on. Enter
    it once the request body has been read: it consumes what ``receive`` reports.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.gone = False

    async def __aenter__(self) -> DisconnectWatch:
        self._task = asyncio.current_task()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        assert self._watcher is not None and self._task is not None
        # not awaited: the block's cleanup runs at once; the watcher ends at its next step
        # (before it could cancel anything) and nobody needs what it would have read
        self._watcher.cancel()
        self._watcher.add_done_callback(_retrieve)
        if not self.gone:
            return False
        # our cancel: swallowed when it was the only one
        return self._task.uncancel() == 0 and exc_type is asyncio.CancelledError


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a failed receive is not worth a "never retrieved" warning


async def first_chunk(chunks: AsyncIterator[Any]) -> tuple[Any, GatewayError | None]:
    """A stream's first chunk (b"" when it has none), or what answers the request instead: a
    ``GatewayError`` it raised, a 500 for any other failure (logged). Cancellation propagates."""
    try:
        return await anext(chunks, b""), None
    except GatewayError as exc:
        return b"", exc
    except Exception:
        log.exception("stream failed before its first byte")
        return b"", InternalError("internal error while streaming", code="internal_error")


class ClosingStreamingResponse(StreamingResponse):
    """A stream with one ending per outcome, whose iterator is always closed.

    - The status line waits for the first chunk: a ``GatewayError`` raised before it is
      answered as that error (its status, the OpenAI body), any other failure as a 500.
    - A failure after the status line aborts the response (``StreamAborted``): the client
      sees an incomplete transfer, not a short body that looks complete.
    - A client that disconnects (``DisconnectWatch``) cancels the stream, however long it
      waits for its next chunk.

    The iterator is closed when the response ends, however it ends, so the work behind it
    stops at once instead of whenever the garbage collector finalises it. ``on_close``
    (sync or async) runs then too: an iterator that never started has no cleanup of its own.
    """

    def __init__(self, content: Any, *, on_close: Callable[[], Any] | None = None, **kw: Any) -> None:
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with DisconnectWatch(receive):
                await self._stream(scope, receive, send)
        finally:
            await aclose_then(self.body_iterator, self._on_close)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = aiter(self.body_iterator)
        first, failed = await first_chunk(chunks)
        if failed is not None:
            await error_response(failed)(scope, receive, send)
            return
        tap = connection_tap(scope) if first else None
        if tap is not None:
            tap.hold_head()  # the head goes out with the first chunk, in one write
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            if first:
                await self._send_chunk(send, first)
            async for chunk in chunks:
                await self._send_chunk(send, chunk)
        except OSError:
            return  # ASGI 2.4: the client is gone (a send raised); nothing more to send
        except Exception as exc:
            if isinstance(exc, GatewayError):
                log.warning("stream cut after its status line: %s", exc.message)
            else:
                log.error("stream cut after its status line", exc_info=exc)
            # the cause is logged above; the server logs this one and closes the connection
            raise StreamAborted(str(exc) or type(exc).__name__) from None
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_chunk(self, send: Send, chunk: Any) -> None:
        body = chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset)
        await send({"type": "http.response.body", "body": body, "more_body": True})


async def aclose_then(iterator: Any, on_close: Callable[[], Any] | None) -> None:
    """Close ``iterator`` if it can be closed, then run ``on_close`` (sync or async), also
    when closing failed."""
    try:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
    finally:
        if on_close is not None:
            done = on_close()
            if inspect.isawaitable(done):
                await done


class FastJSONResponse(Response):
    """JSON rendered with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)

def error_response(exc: GatewayError) -> FastJSONResponse:
    return FastJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)
