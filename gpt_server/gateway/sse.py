"""Server-sent events: framing, [DONE], keep-alive and mid-stream errors in one place."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..errors import GatewayError, InternalError, TimeoutError_
from ..server_common import ClosingStreamingResponse

__all__ = ["frame", "DONE", "KEEPALIVE", "sse_response"]

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def frame(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _pump(chunks: AsyncIterator[Any], keepalive: float, timeout: float | None) -> AsyncIterator[bytes]:
    """One producer task per stream (so the deadline is a plain ``asyncio.timeout``), a
    bounded queue for backpressure, a keep-alive comment when the stream is idle."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=256)
    last_put = [asyncio.get_running_loop().time()]

    async def put(item: bytes | None) -> None:
        await queue.put(item)
        last_put[0] = asyncio.get_running_loop().time()

    async def produce() -> None:
        try:
            async with asyncio.timeout(timeout):
                async for c in chunks:
                    await put(frame(c))
        except TimeoutError:
            await put(frame(TimeoutError_(f"the request did not finish within {timeout:g} seconds").body()))
        except GatewayError as exc:
            await put(frame(exc.body()))
        except Exception:  # noqa: BLE001 - a stream must end with an error event, not a cut
            log.exception("stream failed")
            await put(frame(InternalError("internal error while streaming").body()))
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        await put(DONE)
        await put(None)

    async def ping() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(keepalive)
            if loop.time() - last_put[0] >= keepalive:
                await put(KEEPALIVE)

    producer = asyncio.create_task(produce())
    pinger = asyncio.create_task(ping())
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            # whatever else is ready goes out in the same write (fewer syscalls per token)
            batch = [item]
            end = False
            while not queue.empty():
                more = queue.get_nowait()
                if more is None:
                    end = True
                    break
                batch.append(more)
            yield batch[0] if len(batch) == 1 else b"".join(batch)
            if end:
                return
    finally:
        pinger.cancel()
        if not producer.done():
            producer.cancel()  # the client left: stop generating
        await asyncio.gather(producer, pinger, return_exceptions=True)


def sse_response(chunks: AsyncIterator[Any], *, keepalive: float = 15.0, timeout: float | None = None) -> ClosingStreamingResponse:
    return ClosingStreamingResponse(
        _pump(chunks, keepalive, timeout),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
