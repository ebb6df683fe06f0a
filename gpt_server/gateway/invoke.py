"""Gateway side of non-generation capabilities: one call to a worker, JSON or bytes back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from ..errors import UpstreamError
from ..protocol.kinds import Capability
from ..server_common import ClosingStreamingResponse
from .convert import new_id
from .relay import Relay

__all__ = ["call_json", "call_passthrough"]


def _relay(request: Request) -> Relay:
    return request.app.state.relay


async def call_json(request: Request, model: str, capability: Capability, payload: BaseModel) -> dict[str, Any]:
    """Invoke ``capability`` on a worker serving ``model``; its JSON result."""
    resp = await _relay(request).invoke(model, capability, payload, new_id("req"))
    try:
        raw = await resp.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise UpstreamError("the model worker stopped responding") from exc
    finally:
        resp.close()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("the model worker sent a malformed result") from exc


async def call_passthrough(request: Request, model: str, capability: Capability, payload: BaseModel) -> Response:
    """Invoke ``capability`` and stream the worker's body (audio, images …) to the client as is."""
    resp = await _relay(request).invoke(model, capability, payload, new_id("req"))
    media_type = resp.headers.get("content-type", "application/octet-stream")
    passthrough = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-") or k.lower() == "content-disposition"}

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError):
            return  # the worker died mid-body: the client sees a short body, the log has the cause
        finally:
            resp.close()

    return ClosingStreamingResponse(body(), media_type=media_type, headers=passthrough, on_close=resp.close)
