"""Streaming client of an upstream OpenAI-compatible server, speaking our event protocol."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ...errors import GatewayError, ServiceUnavailableError, UpstreamError
from ...protocol.worker import (
    DeltaEvent,
    ErrorEvent,
    Event,
    FinishEvent,
    GenerateRequest,
    UsageEvent,
)
from ..http_client import LoopBoundClient
from .translate import (
    CallsFromJson,
    chunk_events,
    enforces_by_schema,
    upstream_body,
    upstream_error,
)

__all__ = ["UpstreamClient"]

log = logging.getLogger(__name__)


def _error_event(exc: GatewayError) -> ErrorEvent:
    return ErrorEvent(status=exc.status, type=exc.openai_type, message=exc.message, param=exc.param, code=exc.code)


def _usage(usage: Any, fallback_completion: int) -> UsageEvent:
    if isinstance(usage, dict):
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return UsageEvent(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=cached if isinstance(cached, int) and cached >= 0 else None,
        )
    # the upstream ignores stream_options.include_usage: one chunk is one token on the
    # engines we know (vLLM, llama.cpp); the prompt size is unknown
    return UsageEvent(prompt_tokens=0, completion_tokens=fallback_completion)


class UpstreamClient:
    """One ``httpx.AsyncClient`` (created in the worker's event loop) for one upstream."""

    def __init__(
        self, base_url: str, api_key: str | None, timeout: float, name: str = "upstream", flavor: str = "openai"
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.flavor = flavor  # the upstream's API beyond OpenAI's (translate.Flavor)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeouts = httpx.Timeout(connect=10.0, read=timeout, write=60.0, pool=None)
        self._conn = LoopBoundClient(self.base_url, timeouts, headers)

    def _http(self) -> httpx.AsyncClient:
        return self._conn.get()

    def close(self) -> None:
        """Close from any thread (the worker calls backend.close in a thread)."""
        self._conn.close()

    def _unreachable(self, exc: Exception) -> GatewayError:
        # the address is for the log only: clients learn the model's state, not our network
        log.warning("%s at %s is unreachable: %s: %s", self.name, self.base_url, type(exc).__name__, exc)
        return ServiceUnavailableError(f"{self.name} is unreachable", code="upstream_unreachable")

    # ---- JSON endpoints -----------------------------------------------------------
    async def post_json(self, path: str, body: dict[str, Any], *, fresh: bool = False) -> dict[str, Any]:
        data = await self.post_any(path, body, fresh=fresh)
        if not isinstance(data, dict):
            raise UpstreamError(f"{self.name} answered something that is not a JSON object")
        return data

    async def post_any(self, path: str, body: dict[str, Any], *, fresh: bool = False) -> Any:
        """The JSON the upstream answers (any shape); its HTTP errors as ours."""
        try:
            if fresh:  # on a new connection: the pooled ones may be the broken ones
                async with self._conn.fresh() as c:
                    resp = await c.post(path, json=body)
            else:
                resp = await self._http().post(path, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._unreachable(exc) from None
        except httpx.HTTPError as exc:
            log.warning("%s at %s failed: %s: %s", self.name, self.base_url, type(exc).__name__, exc)
            raise UpstreamError(f"{self.name} failed ({type(exc).__name__})") from None
        data = _json_or_none(resp.content)
        if resp.status_code != 200:
            raise upstream_error(resp.status_code, data, resp.headers.get("retry-after"))
        return data

    # ---- streaming generation -------------------------------------------------------
    async def generate(self, req: GenerateRequest, model: str) -> AsyncIterator[Event]:
        path, body = upstream_body(req, model, self.flavor)
        if not enforces_by_schema(req, self.flavor):
            async for ev in self._generate(req, model, path, body):
                yield ev
            return
        calls = CallsFromJson()  # the engine writes the calls as JSON: they become tool calls here
        async for ev in self._generate(req, model, path, body):
            for out in calls.feed(ev) if isinstance(ev, (DeltaEvent, FinishEvent)) else [ev]:
                yield out

    async def _generate(self, req: GenerateRequest, model: str, path: str, body: dict[str, Any]) -> AsyncIterator[Event]:
        state = _StreamState()
        try:
            async with self._http().stream("POST", path, json=body) as resp:
                if resp.status_code != 200:
                    data = _json_or_none(await resp.aread())
                    raise upstream_error(resp.status_code, data, resp.headers.get("retry-after"))
                async for ev in self._read_sse(resp, req.kind, state):
                    yield ev
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if state.chunks:
                yield _error_event(UpstreamError(f"lost the connection to {self.name} mid-stream"))
                return
            raise self._unreachable(exc) from None
        except httpx.TimeoutException as exc:
            if not state.chunks:
                raise UpstreamError(f"{self.name} did not answer in time ({type(exc).__name__})") from None
            yield _error_event(UpstreamError(f"{self.name} went silent mid-stream ({type(exc).__name__})"))
            return
        except httpx.HTTPError as exc:
            if state.chunks:
                yield _error_event(UpstreamError(f"lost the connection to {self.name} mid-stream ({type(exc).__name__})"))
                return
            log.info("%s dropped an empty stream (%s); asking again without streaming", self.name, type(exc).__name__)
        if state.errored:
            return
        if not state.done:
            if not state.chunks:
                # some servers (llama.cpp's) report request errors by dropping an empty
                # stream: ask again without streaming to learn the real answer
                async for ev in self._replay(req, model, body, path):
                    yield ev
                return
            yield _error_event(UpstreamError(f"{self.name} closed the stream before it finished"))
            return
        yield _usage(state.usage, state.deltas)

    async def _read_sse(self, resp: httpx.Response, kind: str, state: _StreamState) -> AsyncIterator[Event]:
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                state.done = True
                return
            chunk = _json_or_none(data.encode())
            if not isinstance(chunk, dict):
                state.errored = True
                yield _error_event(UpstreamError(f"{self.name} sent an unreadable stream chunk"))
                return
            state.chunks += 1
            if chunk.get("error"):
                state.errored = True
                yield _error_event(_stream_error(chunk))
                return
            if chunk.get("usage"):
                state.usage = chunk["usage"]
            for ev in chunk_events(chunk, kind):
                if isinstance(ev, DeltaEvent):
                    state.deltas += 1
                yield ev

    async def _replay(self, req: GenerateRequest, model: str, body: dict[str, Any], path: str) -> AsyncIterator[Event]:
        plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        data = await self.post_json(path, plain, fresh=True)
        events = chunk_events(data, req.kind)
        for ev in events:
            yield ev
        yield _usage(data.get("usage"), sum(isinstance(e, DeltaEvent) for e in events))


class _StreamState:
    def __init__(self) -> None:
        self.chunks = 0
        self.deltas = 0
        self.done = False
        self.errored = False
        self.usage: Any = None


def _stream_error(chunk: dict[str, Any]) -> GatewayError:
    err = chunk.get("error")
    code = err.get("code") if isinstance(err, dict) else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    return upstream_error(status, chunk)


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
