"""The plain JSON POST routes, answered without FastAPI's per-request routing and dependency solving.

FastAPI stays the app: it serves the docs, the schema and every other route. A "plain"
route is one whose endpoint is ``(body: SomeModel, request: Request) -> SomeResponse``
behind the API-key guard and nothing else (chat, completions, embeddings, rerank, moderations, classify…).
For those, ``FastLane`` does what FastAPI would do per request, directly: the key check,
the body validated by pydantic straight from its bytes, the same endpoint called, errors
in the OpenAI shape. FastAPI's route matching walks every route and solves dependencies
per request; on a cold 2-vCPU core that was ~0.6 ms of a chat request's first token.
``GatewayApp`` sends these requests into the gateway's own middlewares directly, past
FastAPI's and Starlette's outer layers (A/B at c=1 embeddings: the gateway's CPU 1.06 → 1.03 ms a
request, p50 −0.13 ms).

The body must be declared JSON (415 otherwise), so a web page cannot post to these routes
with a form or ``text/plain`` without a CORS preflight; a body with no content type is
taken only from a client that is not a browser (no ``Origin``). A large body is parsed
in a thread, so the streams this process serves meanwhile do not stall.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, get_type_hints

import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import BadRequestError, GatewayError, UnsupportedMediaTypeError
from ..web.error_handlers import gateway_error_response, validation_message

__all__ = ["FastLane", "GatewayApp", "plain_routes", "declared_json"]

Endpoint = Callable[[Any, Request], Awaitable[Response]]


Plain = tuple[type[BaseModel], Endpoint, APIRoute]

# bodies above this are validated in a thread (as the worker does): an 18 MiB chat body
# of many small parts takes ~1 s of pydantic
_PARSE_OFF_LOOP_BYTES = 256 * 1024
_TRACE_RECHECK_S = 1.0


def _validate_large(model: type[BaseModel], raw: bytes) -> BaseModel:
    """A large body, in a thread: the model's cheap count checks on the decoded JSON first
    (``precheck``, where it has one), then full validation."""
    precheck = getattr(model, "precheck", None)
    if precheck is not None:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None  # validation names the error
        precheck(data)
        del data
    return model.model_validate_json(raw)


def declared_json(request: Request) -> bool:
    """``application/json`` or ``application/*+json``; no content type only without ``Origin``."""
    ctype = request.headers.get("content-type")
    if ctype is None:
        return "origin" not in request.headers
    media = ctype.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def plain_routes(routes: list[Any]) -> dict[str, Plain]:
    """path → (body model, endpoint, route) for the POST routes of the shape described above."""
    out: dict[str, Plain] = {}
    for r in routes:
        if not isinstance(r, APIRoute) or r.methods != {"POST"} or r.path_format != r.path or r.path in out:
            continue
        if r.dependencies or r.status_code not in (None, 200):
            continue
        params = list(inspect.signature(r.endpoint).parameters.values())
        if len(params) != 2:
            continue
        hints = get_type_hints(r.endpoint)
        body_t, req_t, ret_t = hints.get(params[0].name), hints.get(params[1].name), hints.get("return")
        returns_response = isinstance(ret_t, type) and issubclass(ret_t, Response)  # no response-model pass skipped
        if isinstance(body_t, type) and issubclass(body_t, BaseModel) and req_t is Request and returns_response:
            out[r.path] = (body_t, r.endpoint, r)
    return out


class FastLane:
    """ASGI layer: POSTs to a plain route are answered here, everything else goes on."""

    def __init__(
        self,
        app: ASGIApp,
        routes: dict[str, Plain],
        guard: Callable[[Request], Awaitable[None]],
    ) -> None:
        self.app = app
        self.routes = routes
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        model, endpoint, scope["route"] = route  # the route template labels the metrics
        request = Request(scope, receive)
        try:
            await self.guard(request)
            if not declared_json(request):
                raise UnsupportedMediaTypeError("send the body as JSON, with the header 'Content-Type: application/json'")
            try:
                raw = await request.body()
            except ClientDisconnect:
                return  # gone while sending the body: nobody to answer
            try:
                if len(raw) > _PARSE_OFF_LOOP_BYTES:
                    body = await asyncio.to_thread(_validate_large, model, raw)
                else:
                    body = model.model_validate_json(raw)
            except ValidationError as exc:
                message, param = validation_message(exc.errors())
                raise BadRequestError(message, param=param) from None
            response = await endpoint(body, request)
        except GatewayError as exc:
            response = gateway_error_response(request, exc)
        await response(scope, receive, send)


class GatewayApp(FastAPI):
    """FastAPI, except that a POST to a plain route goes straight into the app's own middlewares
    (``user_middleware``, ``FastLane`` innermost) behind Starlette's ``ServerErrorMiddleware``.

    What it passes by: FastAPI's per-request telemetry check and its telemetry and body-limit
    middlewares (the gateway's ``BodyLimitMiddleware`` holds its limits), Starlette's exception
    middleware and router (``FastLane`` answers these routes itself). With OpenTelemetry
    configured for FastAPI the request takes the full stack, so it is traced as before.
    ``fast_paths``: the plain routes' paths (``plain_routes``), set once the routes are in.
    """

    fast_paths: frozenset[str] = frozenset()
    _fast_stack: ASGIApp | None = None
    _untraced_until = 0.0  # time.monotonic() until which the telemetry check's "no" holds

    def _build_fast_stack(self) -> ASGIApp:
        handler = self.exception_handlers.get(500) or self.exception_handlers.get(Exception)

        async def full(scope: Scope, receive: Receive, send: Send) -> None:  # not reached: FastLane answers them
            await FastAPI.__call__(self, scope, receive, send)

        app: ASGIApp = full
        for cls, args, kwargs in reversed([Middleware(ServerErrorMiddleware, handler=handler, debug=self.debug), *self.user_middleware]):
            app = cls(app, *args, **kwargs)
        return app

    def _traced(self) -> bool:
        """FastAPI's telemetry check, which reads the environment each time (~25 µs a request): a
        "no" holds for a second (a tracer set up later is seen after it)."""
        if time.monotonic() < self._untraced_until:
            return False
        telemetry = getattr(self, "_native_telemetry", None)
        if telemetry is not None and telemetry.enabled():
            self._untraced_until = 0.0
            return True
        self._untraced_until = time.monotonic() + _TRACE_RECHECK_S
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.fast_paths and not self._traced():
            if self.root_path:
                scope["root_path"] = self.root_path
            scope["app"] = self
            if self._fast_stack is None:
                self._fast_stack = self._build_fast_stack()
            await self._fast_stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
