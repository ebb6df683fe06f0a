"""Gateway side of non-generation capabilities: one call to a worker, JSON, bytes or events back.

A worker's streamed body ends one of two ways: complete, or cut (the worker died or failed
after its status line). ``worker_chunks`` turns a cut into ``UpstreamError`` (code
``worker_lost``), so a relayed byte stream is aborted (``ClosingStreamingResponse``) and
an event stream ends with an error event (``SSEResponse``), never as if it were complete.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

import aiohttp
import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, TypeAdapter, ValidationError

from ..errors import UpstreamError
from ..protocol.kinds import Capability
from ..web.responses import ClosingStreamingResponse
from .convert import new_id
from .workers import WorkerClient, WorkerResponse

__all__ = ["resolve_model", "call_bytes", "call_json", "call_stream", "call_passthrough", "worker_chunks", "worker_events", "worker_headers"]

log = logging.getLogger(__name__)

E = TypeVar("E")


def _workers(request: Request) -> WorkerClient:
    return request.app.state.workers


async def resolve_model(request: Request, model: str, capability: Capability) -> str:
    """The served model a request naming ``model`` goes to: itself, or for no name the default
    model of ``capability``, or for an unknown name the catch-all (alias ``*``)."""
    return await _workers(request).resolve(model, capability)


async def call_bytes(request: Request, model: str, capability: Capability, payload: BaseModel) -> bytes:
    """Invoke ``capability`` on a worker serving ``model``; its JSON result as the bytes it sent
    (for a route that answers them as they are), within the request timeout."""
    return await _workers(request).invoke_json(model, capability, payload, new_id("req"))


async def call_json(request: Request, model: str, capability: Capability, payload: BaseModel) -> dict[str, Any]:
    """Invoke ``capability`` on a worker serving ``model``; its JSON result, all of it
    within the request timeout (dispatch, retries and the answer)."""
    raw = await _workers(request).invoke_json(model, capability, payload, new_id("req"))
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("the model worker sent a malformed result") from exc


async def call_stream(request: Request, model: str, capability: Capability, payload: BaseModel) -> WorkerResponse:
    """Invoke ``capability``; the worker's response (status 200), its body still to read
    (``worker_chunks`` / ``worker_events``) or ``close()``."""
    return await _workers(request).invoke(model, capability, payload, new_id("req"))


def worker_headers(resp: WorkerResponse) -> dict[str, str]:
    """The worker's headers a client sees too (``x-…`` and content-disposition)."""
    return {k: v for k, v in resp.headers.items() if k.lower().startswith("x-") or k.lower() == "content-disposition"}


async def worker_chunks(resp: WorkerResponse) -> AsyncGenerator[bytes, None]:
    """The worker's body as it arrives; a body cut short raises ``UpstreamError`` (worker_lost)."""
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    except (TimeoutError, aiohttp.ClientError) as exc:
        log.warning("lost the model worker mid-stream: %s", type(exc).__name__)
        raise UpstreamError("the model worker stopped responding mid-stream", code="worker_lost") from exc
    finally:
        resp.close()


async def worker_events(resp: WorkerResponse, adapter: TypeAdapter[E], final: type) -> AsyncIterator[list[E]]:
    """The worker's NDJSON events, validated, a list per read. The stream must end with a
    ``final`` event: a stream that stops before it raises ``UpstreamError``."""
    buf = b""
    last: Any = None
    async with contextlib.aclosing(worker_chunks(resp)) as chunks:
        async for chunk in chunks:
            buf += chunk
            if b"\n" not in chunk:
                continue
            *lines, buf = buf.split(b"\n")
            events = [_event(adapter, line) for line in lines if line.strip()]
            if events:
                last = events[-1]
                yield events
    if buf.strip():
        last = _event(adapter, buf)
        yield [last]
    if not isinstance(last, final):
        raise UpstreamError("the model worker ended the stream before its final event", code="worker_lost")


def _event(adapter: TypeAdapter[E], line: bytes) -> E:
    try:
        return adapter.validate_json(line)
    except ValidationError as exc:
        raise UpstreamError("the model worker sent a malformed event") from exc


async def call_passthrough(request: Request, model: str, capability: Capability, payload: BaseModel) -> Response:
    """Invoke ``capability`` and stream the worker's body (audio …) to the client as is; a
    body the worker cut short is cut for the client too."""
    resp = await call_stream(request, model, capability, payload)
    media_type = resp.headers.get("content-type", "application/octet-stream")
    return ClosingStreamingResponse(worker_chunks(resp), media_type=media_type, headers=worker_headers(resp), on_close=resp.close)
