"""Server-sent events: framing, endings, keep-alive and hang-ups in one place.

Every event stream the gateway sends goes through ``SSEResponse``: chat and completion
chunks, streamed transcripts and streamed speech. Each event is one ``data:`` line of
JSON (``frame``); a stream always ends with its final event (the source's last one, then
the ``done`` marker if the kind has one, ``[DONE]`` for chat and completions) or with an
error event in the OpenAI shape, never with a silent cut: a stream still running at the
server's drain deadline ends with an error event (code ``server_shutdown``) and the done
marker too.

``SSEResponse`` streams from the request's own task: each batch of events (the events
made from one read of the worker's stream) becomes one write to the client, with no
hand-off between tasks per token. Beside it, ``DisconnectWatch`` ends the stream when the
client disconnects (which closes the worker connection, so the work stops), and an idle
task sends a keep-alive comment when nothing was written for a while.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..errors import GatewayError, InternalError, TimeoutError_
from ..web.lifecycle import is_drain_cancel, shutdown_error
from ..web.responses import DisconnectWatch, aclose_then
from ..web.serve import connection_tap

__all__ = ["frame", "DONE", "KEEPALIVE", "SSEResponse", "plain_error", "typed_error"]

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(event: Any) -> bytes:
    """One SSE event: a JSON-able object or a pydantic model."""
    if isinstance(event, BaseModel):
        return b"data: " + event.__pydantic_serializer__.to_json(event) + b"\n\n"
    return b"data: " + orjson.dumps(event) + b"\n\n"


def plain_error(exc: GatewayError) -> dict[str, Any]:
    """The error event of chat and completion streams: ``{"error": {...}}``."""
    return exc.body()


def typed_error(exc: GatewayError) -> dict[str, Any]:
    """The error event of typed event streams (``{"type": ...}`` events, as audio's):
    ``{"type": "error", "error": {...}}``; SDKs that look for an ``error`` key see it too."""
    return {"type": "error", **exc.body()}


class SSEResponse(Response):
    """An event stream over ``batches`` (an async iterator of lists of events: JSON-able
    objects or pydantic models).

    Ends with ``done`` (``[DONE]`` unless None) after the last batch; a failure (a
    ``GatewayError``, the ``deadline`` (or ``timeout`` seconds), an unexpected exception) becomes the
    ``error_event`` of that error before it. The iterator is always closed, however the
    response ends.
    """

    media_type = "text/event-stream"
    encode: Callable[[Any], bytes] = staticmethod(frame)  # one event on the wire (NDJSON: a line)

    def __init__(
        self,
        batches: AsyncIterator[list[Any]],
        *,
        keepalive: float = 15.0,
        timeout: float | None = None,
        deadline: float | None = None,
        on_close: Callable[[], Any] | None = None,
        done: bytes | None = DONE,
        error_event: Callable[[GatewayError], Any] = plain_error,
        headers: dict[str, str] | None = None,
        encode: Callable[[Any], bytes] | None = None,
        hold_head: bool = False,
    ) -> None:
        """``hold_head``: the head waits for the first write of the body and goes with it, in
        one write (``ConnectionTap.hold_head``): for streams whose first events are at hand (a
        worker answers with its first event), not for ones that may be silent a while."""
        # no super().__init__: it would render an empty body and a Content-Length of 0
        self.status_code = 200
        self.background = None
        self.init_headers({**_HEADERS, **(headers or {})})
        self.batches = batches
        self.keepalive = keepalive
        self.timeout = timeout
        self.deadline = deadline  # event-loop time; default: ``timeout`` from the first write
        self.on_close = on_close  # runs last (sync or async), also when the iterator never started
        self.done = done or b""
        self.error_event = error_event
        if encode is not None:  # one event's bytes (Anthropic's streams name each event)
            self.encode = encode
        self.hold_head = hold_head

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tap = connection_tap(scope) if self.hold_head else None

        async def body(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        started = False
        try:
            async with DisconnectWatch(receive):  # the client left: nothing more to send
                if tap is not None:
                    tap.hold_head()
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                started = True
                await self._relay(body)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if not started or not is_drain_cancel(exc) or task is None or task.uncancel() > 0:
                raise
            log.warning("stream ended at the shutdown drain deadline")
            await body(self.encode(self.error_event(shutdown_error())) + self.done, more=False)
        finally:
            await aclose_then(self.batches, self.on_close)

    async def _relay(self, body: Callable[..., Any]) -> None:
        """Write every batch (``body(data, more)`` writes), a keep-alive comment when nothing
        was written for ``keepalive`` seconds, then the ending: an error event where the
        stream failed, and the done marker."""
        loop = asyncio.get_running_loop()
        last_write = loop.time()

        async def write(data: bytes, more: bool = True) -> None:
            nonlocal last_write
            last_write = loop.time()
            await body(data, more)

        async def ping() -> None:
            while True:
                await asyncio.sleep(max(0.05, self.keepalive - (loop.time() - last_write)))
                if loop.time() - last_write >= self.keepalive:
                    await write(KEEPALIVE)

        pinger = loop.create_task(ping())
        try:
            tail = await self._stream(write)
            await write(tail + self.done, more=False)
        finally:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)

    async def _stream(self, body: Any) -> bytes:
        """Write every batch; what goes before the done marker (an error event, or nothing)."""
        try:
            deadline = self.deadline
            if deadline is None and self.timeout is not None:
                deadline = asyncio.get_running_loop().time() + self.timeout
            async with asyncio.timeout_at(deadline):
                async for batch in self.batches:
                    if batch:
                        await body(b"".join(self.encode(c) for c in batch))
        except TimeoutError:
            within = f" within {self.timeout:g} seconds" if self.timeout is not None else " in time"
            return self.encode(self.error_event(TimeoutError_(f"the request did not finish{within}")))
        except GatewayError as exc:
            return self.encode(self.error_event(exc))
        except Exception:  # a stream must end with an error event, not a cut
            log.exception("stream failed")
            return self.encode(self.error_event(InternalError("internal error while streaming")))
        return b""
