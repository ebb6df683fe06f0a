"""Serving an app: sockets bound up front, uvicorn without its signal handling, uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Callable, Generator
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from .internal import InternalTLS
from .lifecycle import DRAIN_DEADLINE

__all__ = ["bind_socket", "make_server", "run_async", "TRANSPORT_KEY", "ConnectionTap", "Hangups", "connection_tap"]

# scope["extensions"][TRANSPORT_KEY]: the connection's transport (transport.direct hands it to a worker)
TRANSPORT_KEY = "gpt_server.transport"

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


# after the drain deadline, how long requests have to write their ending before uvicorn cuts them
_ENDING_GRACE = 2.0


def make_server(app: ASGIApp, sock: socket.socket, *, graceful: float = 10.0, tls: InternalTLS | None = None) -> uvicorn.Server:
    """``graceful``: seconds in-flight requests may run on once the server is told to exit; then
    they are cancelled with ``DRAIN_DEADLINE`` and end with an answer (``web.lifecycle``); 0 ends
    them at once. ``tls``: serve TLS with its certificate (internal listeners)."""
    config = uvicorn.Config(
        app,
        http=_http_protocol(),
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=math.ceil(graceful + _ENDING_GRACE),  # uvicorn's cut, the backstop
        lifespan="on",
        ssl_certfile=tls.certfile if tls is not None else None,
        ssl_keyfile=tls.keyfile if tls is not None else None,
    )
    return _Server(config, graceful)


class ConnectionTap:
    """A request's view of its connection's transport (``scope["extensions"][TRANSPORT_KEY]``):
    the transport itself for a worker on this host to write a stream to (``transport.direct``),
    and, once that worker has written the body's last chunk too, ``ended_elsewhere()``, so that
    the server's own last chunk is not written a second time. ``hold_head()`` makes a response
    head and the first chunk of its body one write. uvicorn's response cycle writes through it;
    everything else is the transport's."""

    _LAST_CHUNK = b"0\r\n\r\n"

    def __init__(self, transport: Any, hangups: Hangups | None = None) -> None:
        self.transport = transport
        self._hangups = hangups
        self._skip_last = False
        self._holding = False  # the next write (the head) waits for the one after it
        self._head: bytes | None = None

    def on_hangup(self, callback: Callable[[], None]) -> bool:
        """Have ``callback`` called on the loop, once, when the client's connection is lost (at once
        if it is already); False where this tap cannot tell (then listen with ``receive``).
        ``off_hangup`` when the request is over."""
        hangups = self._hangups
        if hangups is None:
            return False
        if hangups.lost:
            asyncio.get_running_loop().call_soon(callback)
        else:
            hangups.calls.add(callback)
        return True

    def off_hangup(self, callback: Callable[[], None]) -> None:
        if self._hangups is not None:
            self._hangups.calls.discard(callback)

    def ended_elsewhere(self) -> None:
        """The chunked body's last chunk has been written by another process."""
        self._skip_last = True

    def hold_head(self) -> None:
        """Keep the response's next write (its head) and write it with the one after it (the
        first chunk of the body, or the body's end): one segment wakes the reader once (on a
        loaded host each write to a local peer cost ~0.5 ms of the time to first token;
        bench/README.md). Call it before the response starts."""
        self._holding, self._head = True, None

    def write(self, data: bytes) -> None:
        if self._skip_last and data == self._LAST_CHUNK:
            self._skip_last = False
            return
        if self._holding:
            if self._head is None:
                self._head = data
                return
            data, self._head, self._holding = self._head + data, None, False
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class Hangups:
    """A connection's loss, heard by the requests served on it (``ConnectionTap.on_hangup``): the
    server tells them directly, where a task per request listening on ``receive`` cost a task's
    start and cancellation each time."""

    __slots__ = ("lost", "calls")

    def __init__(self) -> None:
        self.lost = False
        self.calls: set[Callable[[], None]] = set()

    def fire(self) -> None:
        self.lost = True
        calls, self.calls = self.calls, set()
        for call in calls:
            try:
                call()
            except Exception:  # one request's listener must not keep the others from hearing it
                log.exception("a hang-up listener failed")


def connection_tap(scope: Any) -> ConnectionTap | None:
    """The request's ``ConnectionTap`` (None where the server is not ours, or HTTP/2)."""
    ext = scope.get("extensions")
    tap = ext.get(TRANSPORT_KEY) if ext else None
    return tap if isinstance(tap, ConnectionTap) else None


def _http_protocol() -> Any:
    """uvicorn's httptools protocol, each request's scope carrying a ``ConnectionTap`` of its
    connection (``scope["extensions"][TRANSPORT_KEY]``); uvicorn's choice where httptools is
    not installed."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class _Protocol(HttpToolsProtocol):
        _hangups: Hangups | None = None

        def connection_made(self, transport: Any) -> None:
            self._hangups = Hangups()
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            if self._hangups is not None:
                self._hangups.fire()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            tap = ConnectionTap(self.transport, self._hangups)
            self.scope["extensions"] = {TRANSPORT_KEY: tap}  # type: ignore[dict-item]  # not an ASGI extension's dict

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            cycle = getattr(self, "cycle", None)
            if cycle is not None and cycle.scope is self.scope and hasattr(cycle, "transport"):
                cycle.transport = self.scope["extensions"][TRANSPORT_KEY]

    return _Protocol


# how often an idle server wakes (uvicorn's own loop wakes ten times a second): its Date header
# is refreshed once a second either way, and an exit asked for is seen at once (``should_exit``)
_TICK_S = 1.0


class _Server(uvicorn.Server):
    """Signals belong to whoever runs the servers (the launcher drains the gateway before the
    workers; each role sets its own handlers), so uvicorn does not capture them. At the
    drain deadline the requests still running are cancelled with ``DRAIN_DEADLINE``, so
    each ends with its own ending (an error event and ``[DONE]``, a 503) before uvicorn's
    backstop cuts what is left.

    The main loop wakes once a second, not ten times: on two cores beside a running decode every
    wake-up of an idle process takes a core from a compute thread (bench/README.md, thirteenth
    session). Setting ``should_exit`` (on the loop's thread) ends the wait at once."""

    def __init__(self, config: uvicorn.Config, graceful: float) -> None:
        self._exit = asyncio.Event()
        super().__init__(config)
        self.graceful = graceful

    @property
    def should_exit(self) -> bool:
        return self._exit.is_set()

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        # on the loop's thread only (an asyncio.Event), as every caller does: the launcher's
        # coroutines and signal handlers (``loop.add_signal_handler``), the worker's drain task
        if value:
            self._exit.set()
        else:
            self._exit.clear()

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            # on_tick refreshes the Date header where counter % 10 == 0: every tick here
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TICK_S):
                    await self._exit.wait()
            should_exit = await self.on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = asyncio.get_running_loop().call_later(self.graceful, self._end_requests)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    def _end_requests(self) -> None:
        if self.server_state.tasks:
            log.warning("drain deadline (%gs): ending %d request(s) still running", self.graceful, len(self.server_state.tasks))
        for task in self.server_state.tasks:
            task.cancel(msg=DRAIN_DEADLINE)


def run_async(coro: Any) -> Any:
    """Run the main coroutine on uvloop when it is installed, else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
