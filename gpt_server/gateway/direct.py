"""The gateway's side of streams a worker writes to the client itself (``transport.direct``).

``HandedSSEResponse`` is the chat/completion stream when the worker was asked for a
hand-off. Where the engine writes the stream's deltas on its own thread (no parser between
them and the client, ``protocol.deltas``), the worker answers its status line as soon as the
engine has the request (``HAND_NOW_HEADER``): the gateway writes the response head (and a
chat's role chunks) and hands the client's connection over during the prefill, and the
engine's thread writes the first token to the client itself. Otherwise the worker answers with
the stream's first event; the gateway writes the head and that event's chunks, then hands the
connection over, and the worker writes the rest while the next token is decoded. The gateway
then waits for the worker's ``EndEvent`` and ends the chunked body. Where the connection cannot
be handed over (its head still buffered, the worker's socket gone, a first event that is an
error), it tells the worker so and relays the rest as ``SSEResponse`` does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from ..chat.chunks import ChunkShape, render_batch
from ..errors import GatewayError, TimeoutError_, UpstreamError, error_from_body
from ..protocol.worker import EndEvent, ErrorEvent, Event
from ..transport.direct import HandoffClient
from ..web.lifecycle import is_drain_cancel, shutdown_error
from ..web.responses import DisconnectWatch, aclose_then
from ..web.serve import ConnectionTap
from .sse import SSEResponse

__all__ = ["HandedSSEResponse"]

log = logging.getLogger(__name__)

_END_GRACE = 5.0  # after the deadline, how long the worker has to say it ended the stream
_STOP_GRACE = 2.0  # at the drain deadline, how long it has to write its ending


def _error(ev: ErrorEvent) -> GatewayError:
    return error_from_body(ev.status, {"error": {"message": ev.message, "type": ev.type, "param": ev.param, "code": ev.code}})


class HandedSSEResponse(SSEResponse):
    """``events``: the worker's events, a list per read (metered); ``shape`` renders them."""

    def __init__(
        self,
        events: AsyncIterator[list[Event]],
        *,
        handoff: HandoffClient,
        socket_path: str,
        token: str,
        transport: Any,
        shape: ChunkShape,
        on_handed: Callable[[], None] | None = None,
        now: bool = False,
        **kw: Any,
    ) -> None:
        """``now``: the worker waits for the connection before the stream's first event."""
        super().__init__(events, **kw)
        self.events = events
        self.handoff = handoff
        self.socket_path = socket_path
        self.token = token
        self.transport = transport
        self.shape = shape
        self.on_handed = on_handed
        self.now = now

    def _render(self, batch: list[Event]) -> tuple[list[dict[str, Any]], GatewayError | None]:
        out, failed = render_batch(batch, self.shape.chunks)
        return out, None if failed is None else _error(failed)

    async def _rest(self) -> AsyncIterator[list[dict[str, Any]]]:
        """The events after the first, relayed (``SSEResponse._stream`` writes them)."""
        async for batch in self.events:
            out, failed = self._render(batch)
            if out:
                yield out
            if failed is not None:
                raise failed

    def _hand(self, remaining: float) -> bool:
        t = self.transport
        sock = t.get_extra_info("socket")
        if sock is None or t.is_closing() or t.get_write_buffer_size() != 0:
            return False  # what the gateway wrote must have left before the worker writes
        return self.handoff.hand(
            self.socket_path, self.token, sock.fileno(), self.shape,
            timeout=remaining, limit=self.timeout or remaining, keepalive=self.keepalive,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        deadline = self.deadline
        if deadline is None:
            deadline = loop.time() + (self.timeout or 600.0)
        # the worker's answer, read in a task of its own: the drain deadline's cancel must not cut it
        reader: asyncio.Task[bytes | None] | None = None
        relaying = False

        async def body(data: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        tap = self.transport if isinstance(self.transport, ConnectionTap) else None
        try:
            async with DisconnectWatch(receive):
                if tap is not None:
                    tap.hold_head()  # the head goes with the first chunks, in one write
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                relaying = True
                if self.now:
                    first, failed = b"".join(self.encode(c) for c in self.shape.head()), None
                else:
                    first, failed = await self._first(deadline)
                if failed is not None:  # nothing to hand over: the stream ends here
                    self.handoff.decline(self.socket_path, self.token)
                    await body(first + self.encode(self.error_event(failed)) + self.done, more=False)
                    return
                await body(first)
                if not self._hand(max(0.0, deadline - loop.time())):
                    self.handoff.decline(self.socket_path, self.token)
                    await self._relay_rest(body)
                    return
                relaying = False
                if self.on_handed is not None:
                    self.on_handed()
                reader = loop.create_task(self._wait_end(deadline + _END_GRACE))
                await self._end(body, await asyncio.shield(reader))
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if not is_drain_cancel(exc) or task is None or task.uncancel() > 0:
                raise
            log.warning("stream ended at the shutdown drain deadline")
            if reader is not None and self.handoff.stop(self.socket_path, self.token):
                # the worker writes the shutdown's error event and [DONE], then answers
                done, _ = await asyncio.wait({reader}, timeout=_STOP_GRACE)
                await self._end(body, reader.result() if done else b"")
            elif relaying:
                await body(self.encode(self.error_event(shutdown_error())) + self.done, more=False)
            else:
                await body(b"", more=False)  # the worker cannot be told: end the body as it stands
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            await aclose_then(self.events, self.on_close)

    async def _end(self, body: Any, tail: bytes | None) -> None:
        """Complete the response: ``tail`` written (the gateway's ending), or None where the
        worker wrote the body's last chunk itself (the server must not write it again)."""
        if tail is None:
            self.transport.ended_elsewhere()
        await body(tail or b"", more=False)

    async def _first(self, deadline: float) -> tuple[bytes, GatewayError | None]:
        """The head and the first read's chunks (the worker sent its first event with its
        status line, and waits for the hand-off before it sends more), or what failed."""
        head = [self.encode(c) for c in self.shape.head()]
        try:
            async with asyncio.timeout_at(deadline):
                batch = await anext(aiter(self.events), None)
        except TimeoutError:
            return b"".join(head), TimeoutError_(f"the request did not finish within {self.timeout:g} seconds")
        if batch is None:
            return b"".join(head), UpstreamError("the model worker ended the stream before its first event", code="worker_lost")
        out, failed = self._render(batch)
        return b"".join(head + [self.encode(c) for c in out]), failed

    async def _relay_rest(self, body: Any) -> None:
        """The events after the first, relayed as ``SSEResponse`` writes a stream."""
        self.batches = self._rest()
        try:
            await self._relay(body)
        finally:
            await aclose_then(self.batches, None)

    async def _wait_end(self, until: float) -> bytes | None:
        """Wait for the worker's ``EndEvent``: None then (it wrote the ending), else the
        ending the gateway writes itself (the worker lost, or silent past ``until``)."""
        failure: GatewayError | None = None
        try:
            async with asyncio.timeout_at(until):
                async for batch in self.events:
                    for ev in batch:
                        if isinstance(ev, EndEvent):
                            return None
                        if isinstance(ev, ErrorEvent):  # the worker's connection broke
                            failure = _error(ev)
            failure = failure or UpstreamError("the model worker stopped responding mid-stream", code="worker_lost")
        except TimeoutError:
            failure = TimeoutError_(f"the request did not finish within {self.timeout:g} seconds")
        log.warning("a direct stream ended without the worker's end: %s", failure.code)
        return self.encode(self.error_event(failure)) + self.done
