"""Serving an app: sockets bound up front, uvicorn without its signal handling, uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Generator
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from .internal import InternalTLS

__all__ = ["bind_socket", "make_server", "run_async"]

log = logging.getLogger("gpt_server")


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind now (port 0 = ephemeral) so the real port is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def make_server(app: ASGIApp, sock: socket.socket, *, graceful: float = 10.0, tls: InternalTLS | None = None) -> uvicorn.Server:
    """``graceful``: seconds in-flight requests may finish once the server is told to exit (0: none,
    they are cut at once); ``tls``: serve TLS with its certificate (internal listeners)."""
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=math.ceil(graceful),  # 0 = do not wait (None would wait forever)
        lifespan="on",
        ssl_certfile=tls.certfile if tls is not None else None,
        ssl_keyfile=tls.keyfile if tls is not None else None,
    )
    return _Server(config)


class _Server(uvicorn.Server):
    """Signals belong to whoever runs the servers (the launcher drains the gateway before the
    workers; each role sets its own handlers), so uvicorn does not capture them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def run_async(coro: Any) -> Any:
    """Run the main coroutine on uvloop when it is installed, else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
