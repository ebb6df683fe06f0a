"""Request body limits (413 in the OpenAI shape, with or without Content-Length)."""

from __future__ import annotations

import logging

import orjson
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import error_body

__all__ = ["BodyLimitMiddleware", "body_bytes"]

log = logging.getLogger("gpt_server")


def body_bytes(request: HTTPConnection) -> int:
    """The size the client declared for its body (Content-Length), 0 if none or unreadable."""
    try:
        return int(request.headers.get("content-length", 0))
    except ValueError:
        return 0


class BodyLimitMiddleware:
    """Refuse bodies above their limit with 413, whether or not Content-Length is sent:
    ``limit`` for multipart uploads (audio, images), ``json_limit`` (at most ``limit``) for
    every other body, which the server parses and holds whole."""

    def __init__(self, app: ASGIApp, limit: int, json_limit: int | None = None) -> None:
        self.app = app
        self.upload_limit = limit
        self.json_limit = min(limit, json_limit or limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.json_limit
        length = None
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                length = v
            elif k == b"content-type" and v[:19].lower() == b"multipart/form-data":
                limit = self.upload_limit
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                too_big = False
            if too_big:
                await self._reject(send, limit)
                return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send, limit)

    async def _reject(self, send: Send, limit: int) -> None:
        body = orjson.dumps(
            error_body(f"request body larger than {limit} bytes", "invalid_request_error", None, "request_too_large")
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
