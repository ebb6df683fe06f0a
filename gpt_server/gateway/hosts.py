"""The Host header check: a server on loopback answers only to loopback names.

A server bound to 127.0.0.1 without API keys is reachable by any web page the user opens,
through DNS rebinding (``evil.example`` resolving to 127.0.0.1): the browser then sends
``Host: evil.example``. Refusing host names the server was not meant to be reached by
stops that; ``serve_args.allowed_hosts`` adds names (a reverse proxy's, a LAN name).
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import BadRequestError
from ..web.internal import is_loopback

__all__ = ["HostGuardMiddleware", "host_guard_needed", "host_name"]




def host_name(value: str) -> str:
    """The name of a Host header value: no port, no brackets, lower case, no final dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def host_guard_needed(bind_host: str, allowed: list[str]) -> bool:
    """Checked when bound to loopback, or when names are configured (unless one is ``*``)."""
    if "*" in allowed:
        return False
    return bool(allowed) or is_loopback(host_name(bind_host))


class HostGuardMiddleware:
    """400 (OpenAI shape, code ``invalid_host``) for a Host that is neither loopback, the
    bind address nor one of ``allowed``. A request without a Host header (HTTP/1.0, not a
    browser) is let through."""

    def __init__(self, app: ASGIApp, bind_host: str, allowed: list[str]) -> None:
        self.app = app
        self.allowed = {host_name(h) for h in [bind_host, *allowed]}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = next((v for k, v in scope.get("headers", ()) if k == b"host"), None)
            if raw is not None:
                name = host_name(raw.decode("latin-1"))
                if name not in self.allowed and not is_loopback(name):
                    await self._reject(name, send)
                    return
        await self.app(scope, receive, send)

    async def _reject(self, name: str, send: Send) -> None:
        exc = BadRequestError(
            f"this server does not answer to the host name '{name[:100]}'; add it to serve_args.allowed_hosts",
            code="invalid_host",
        )
        body = orjson.dumps(exc.body())
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})
