"""Server-sent events: framing, [DONE], keep-alive and mid-stream errors in one place."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi.responses import StreamingResponse

from ..errors import GatewayError, InternalError

__all__ = ["frame", "DONE", "KEEPALIVE", "sse_response"]

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def frame(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _guarded(chunks: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    try:
        async for c in chunks:
            yield frame(c)
    except GatewayError as exc:
        yield frame(exc.body())
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - a stream must end with an error event, not a cut
        log.exception("stream failed")
        yield frame(InternalError("internal error while streaming").body())
    yield DONE


async def _keepalive(source: AsyncIterator[bytes], interval: float) -> AsyncIterator[bytes]:
    it = source.__aiter__()
    nxt: asyncio.Future[bytes] = asyncio.ensure_future(it.__anext__())
    try:
        while True:
            done, _ = await asyncio.wait({nxt}, timeout=interval)
            if not done:
                yield KEEPALIVE
                continue
            try:
                item = nxt.result()
            except StopAsyncIteration:
                return
            yield item
            nxt = asyncio.ensure_future(it.__anext__())
    finally:
        if not nxt.done():
            nxt.cancel()
            try:
                await nxt
            except (asyncio.CancelledError, StopAsyncIteration):
                pass
            except Exception:  # noqa: BLE001
                pass
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


def sse_response(chunks: AsyncIterator[Any], *, keepalive: float = 15.0) -> StreamingResponse:
    return StreamingResponse(
        _keepalive(_guarded(chunks), keepalive),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
