"""Server-sent events: framing, [DONE], keep-alive and mid-stream errors in one place.

``SSEResponse`` streams from the request's own task: each batch of chunks (the chunks
made from one read of the worker's stream) becomes one write to the client, with no
hand-off between tasks per token. Two idle helper tasks run beside it: one ends the
stream when the client disconnects (which closes the worker connection, so generation
stops), one sends a keep-alive comment when nothing was written for a while.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..errors import GatewayError, InternalError, TimeoutError_
from ..server_common import aclose_then

__all__ = ["frame", "DONE", "KEEPALIVE", "SSEResponse"]

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class SSEResponse(Response):
    """An event stream over ``batches`` (an async iterator of lists of JSON-able chunks).

    Ends with ``[DONE]``; a failure (a ``GatewayError``, the ``timeout`` deadline, an
    unexpected exception) becomes an error event before it. The iterator is always
    closed, however the response ends.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        batches: AsyncIterator[list[Any]],
        *,
        keepalive: float = 15.0,
        timeout: float | None = None,
        on_close: Callable[[], Any] | None = None,
    ) -> None:
        # no super().__init__: it would render an empty body and a Content-Length of 0
        self.status_code = 200
        self.background = None
        self.init_headers(_HEADERS)
        self.batches = batches
        self.keepalive = keepalive
        self.timeout = timeout
        self.on_close = on_close  # runs last (sync or async), also when the iterator never started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        last_write = loop.time()
        client_gone = False

        async def body(data: bytes, more: bool = True) -> None:
            nonlocal last_write
            last_write = loop.time()
            await send({"type": "http.response.body", "body": data, "more_body": more})

        async def watch() -> None:
            nonlocal client_gone
            while (await receive())["type"] != "http.disconnect":
                pass
            client_gone = True
            task.cancel()

        async def ping() -> None:
            while True:
                await asyncio.sleep(max(0.05, self.keepalive - (loop.time() - last_write)))
                if loop.time() - last_write >= self.keepalive:
                    await body(KEEPALIVE)

        helpers: list[asyncio.Task[None]] = []
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            helpers = [loop.create_task(watch()), loop.create_task(ping())]
            tail = await self._stream(body)
            await body(tail + DONE, more=False)
        except asyncio.CancelledError:
            if not client_gone:
                raise
            task.uncancel()  # the client left: nothing more to send
        finally:
            for t in helpers:
                t.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await aclose_then(self.batches, self.on_close)

    async def _stream(self, body: Any) -> bytes:
        """Write every batch; what goes before [DONE] (an error event, or nothing)."""
        try:
            async with asyncio.timeout(self.timeout):
                async for batch in self.batches:
                    if batch:
                        await body(b"".join(frame(c) for c in batch))
        except TimeoutError:
            return frame(TimeoutError_(f"the request did not finish within {self.timeout:g} seconds").body())
        except GatewayError as exc:
            return frame(exc.body())
        except Exception:  # a stream must end with an error event, not a cut
            log.exception("stream failed")
            return frame(InternalError("internal error while streaming").body())
        return b""

