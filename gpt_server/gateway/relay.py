"""Relay a request to a worker: dispatch, retry other replicas before the first byte."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from pydantic import ValidationError

from ..controller.client import ControllerClient
from ..errors import GatewayError, ServiceUnavailableError, error_from_body
from ..protocol.worker import (
    EVENT_ADAPTER,
    SECRET_HEADER,
    DispatchReply,
    ErrorEvent,
    Event,
    GenerateRequest,
    InvokeRequest,
)

__all__ = ["Relay", "EventStream"]

log = logging.getLogger(__name__)

_RETRY_STATUS = {429, 503}


class EventStream:
    """Worker events, parsed; a broken connection becomes a final error event."""

    def __init__(self, response: httpx.Response, target: DispatchReply) -> None:
        self.response = response
        self.target = target

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            async for line in self.response.aiter_lines():
                if not line:
                    continue
                try:
                    yield EVENT_ADAPTER.validate_json(line)
                except ValidationError:
                    log.error("worker %s sent a malformed event", self.target.worker_id)
                    yield ErrorEvent(status=502, type="server_error", message="malformed event from worker", code="upstream_error")
                    return
        except httpx.HTTPError as exc:
            log.warning("lost worker %s mid-stream: %s", self.target.worker_id, type(exc).__name__)
            yield ErrorEvent(
                status=502,
                type="server_error",
                message="the model worker stopped responding during generation",
                code="worker_lost",
            )
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        # In a task that is being cancelled (the client left), httpx's close would be
        # skipped and the worker would keep generating: close in a task of its own.
        await asyncio.shield(asyncio.ensure_future(self.response.aclose()))


class Relay:
    def __init__(
        self,
        controller: ControllerClient,
        *,
        max_retries: int = 2,
        secret: str | None = None,
        timeout: float = 600.0,
    ) -> None:
        self.controller = controller
        self.max_retries = max_retries
        headers = {SECRET_HEADER: secret} if secret else {}
        self.client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def open(self, model: str, request: GenerateRequest) -> EventStream:
        """Start a chat/completion on a worker; the stream of events it answers."""
        payload = request.__pydantic_serializer__.to_json(request)
        resp, target = await self._send(model, request.kind, "/worker/generate", payload)
        return EventStream(resp, target)

    async def invoke(self, model: str, capability: str, payload: dict[str, Any], request_id: str) -> httpx.Response:
        """Call a non-generation capability; the worker's response, body not yet read.

        The caller must read or ``aclose()`` it. JSON results have content-type
        application/json; binary results (audio, images) carry their own media type.
        """
        req = InvokeRequest(request_id=request_id, model=model, capability=capability, payload=payload)
        resp, _ = await self._send(model, capability, "/worker/invoke", req.__pydantic_serializer__.to_json(req))
        return resp

    async def _send(self, model: str, capability: str, path: str, payload: bytes) -> tuple[httpx.Response, DispatchReply]:
        exclude: list[str] = []
        last: GatewayError | None = None
        for _ in range(self.max_retries + 1):
            try:
                target = await self.controller.dispatch(model, exclude, capability)
            except GatewayError as exc:
                if last is not None and exc.status in (404, 503):
                    raise last from None
                raise
            req = self.client.build_request(
                "POST", f"{target.address}{path}", content=payload, headers={"content-type": "application/json"}
            )
            try:
                resp = await self.client.send(req, stream=True)
            except httpx.TransportError as exc:
                log.warning("worker %s unreachable (%s); trying another replica", target.worker_id, type(exc).__name__)
                await self.controller.report_failure(target.worker_id)
                exclude.append(target.worker_id)
                last = ServiceUnavailableError(f"no reachable worker for model '{model}'")
                continue
            if resp.status_code == 200:
                return resp, target
            raw = await resp.aread()
            await resp.aclose()
            try:
                body = orjson.loads(raw)
            except ValueError:
                body = None
            err = error_from_body(resp.status_code, body)
            if resp.status_code in _RETRY_STATUS:
                exclude.append(target.worker_id)
                last = err
                continue
            raise err
        assert last is not None
        raise last
