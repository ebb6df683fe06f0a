"""In-process workers: a worker's ASGI app called from the gateway's own event loop.

A worker replica configured with ``in_process: true`` runs inside the gateway process.
Its app is the same Starlette app a worker process serves, registered with the process's
``InProcessTransport`` (built by the launcher, handed to the gateway) under an
``inproc://`` address; the gateway calls it through ``post`` instead of a socket. The
bytes are the same (JSON request, NDJSON or binary answer), so admission, errors,
cancellation and usage behave exactly as over HTTP. What is saved is the hop: no
loopback connection, no second process to wake per token.

Chat and completions go one step further (``generate``): the worker's ``Generation``
(the same code its HTTP route streams from) is started here and its events are
iterated as objects in the gateway's request task. No NDJSON per token, no second
task and no queue between them; a hang-up cancels that task, which stops the engine's
sequence as closing the connection would.

When the caller closes a response that is still streaming, the app's task is cancelled
at once (its iterator and ``on_close`` still run), so generation stops as it does when
the gateway cuts a worker connection. A handler the caller left before it answered runs
on to its first send, and is cancelled there: it is never cancelled mid-way before it
has answered, as under uvicorn. So the bridge declares ASGI spec 2.4 and Starlette needs
no disconnect-listening task per response. A ``ClosingStreamingResponse`` still hears the
hang-up while it waits for its first chunk (an image job): ``receive`` reports
``http.disconnect`` once the caller has closed, as a socket would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from starlette.types import ASGIApp, Message

__all__ = ["SCHEME", "InProcessTransport", "is_local", "LocalResponse", "LocalGeneration"]

log = logging.getLogger(__name__)

SCHEME = "inproc://"
_QUEUE_CHUNKS = 64  # chunks buffered before the app's send waits (a socket's send buffer)


class LocalGeneration(Protocol):
    """A generation started on a worker in this process (``worker.generation.Generation``)."""

    def events(self) -> AsyncGenerator[Any, None]: ...

    async def aclose(self) -> None: ...


_END = object()


class _Content:
    """The body as it is sent; ``iter_any`` yields what is ready in one piece (as one
    network read would), so the caller can answer several events with one write."""

    def __init__(self, queue: asyncio.Queue[Any], read_timeout: float | None) -> None:
        self._queue = queue
        self._ended = False
        self._read_timeout = read_timeout  # as aiohttp's sock_read: the longest wait for more

    async def iter_any(self) -> AsyncIterator[bytes]:
        while not self._ended:
            parts: list[bytes] = []
            try:
                async with asyncio.timeout(self._read_timeout):
                    item = await self._queue.get()
            except TimeoutError:
                self._ended = True
                raise aiohttp.ServerTimeoutError("in-process worker sent nothing within the read timeout") from None
            while True:
                if item is _END:
                    self._ended = True
                    break
                if isinstance(item, BaseException):
                    self._ended = True
                    if parts:
                        yield b"".join(parts)
                    raise item
                parts.append(item)
                if self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if parts:
                yield b"".join(parts)


class LocalResponse:
    """The part of ``aiohttp.ClientResponse`` the relay uses, for an in-process call."""

    def __init__(self, read_timeout: float | None = None) -> None:
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self._queue: asyncio.Queue[Any] = asyncio.Queue(_QUEUE_CHUNKS)
        self.content = _Content(self._queue, read_timeout)
        self.closed = asyncio.Event()
        self.started = False  # status and headers sent
        self.finished = False  # the last body message sent
        self.task: asyncio.Task[None] | None = None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.content.iter_any()])

    def close(self) -> None:
        """The caller is done: a response still streaming is cancelled; one not started
        yet is cancelled at its first send (``receive`` reports the hang-up meanwhile)."""
        if self.closed.is_set():
            return
        self.closed.set()
        # unblock a send waiting on a full queue; what is left is never read, and a
        # reader still waiting sees the end
        self._end_now(_END)
        if self.started and not self.finished and self.task is not None and not self.task.done():
            self.task.cancel()

    release = close

    def _end_now(self, item: Any) -> None:
        """End the body with ``item`` at once (dropping what is queued)."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(item)

    async def _end(self, item: Any) -> None:
        """End the body with ``item`` after what is queued (``close`` makes room)."""
        if not self.closed.is_set():
            await self._queue.put(item)


def is_local(address: str) -> bool:
    """An in-process address (``inproc://``), of this process or another one."""
    return address.startswith(SCHEME)


class InProcessTransport:
    """The in-process workers of one ``serve`` process, by address, and the calls to them.

    The launcher creates one and hands it to the workers it runs in process (``register``)
    and to the gateway (``post``, ``generate``); nothing about it is global.
    """

    def __init__(self) -> None:
        self._apps: dict[str, ASGIApp] = {}
        self._generate: dict[str, Callable[[Any], Awaitable[LocalGeneration]]] = {}
        self._running: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly

    def register(
        self, address: str, app: ASGIApp, generate: Callable[[Any], Awaitable[LocalGeneration]] | None = None
    ) -> None:
        """``app`` answers every route; ``generate`` (a ``GenerateRequest`` → its started
        generation), when given, serves chat/completions without the bytes in between."""
        if not is_local(address):
            raise ValueError(f"in-process worker address must start with {SCHEME}")
        self._apps[address] = app
        if generate is not None:
            self._generate[address] = generate

    def unregister(self, address: str) -> None:
        self._apps.pop(address, None)
        self._generate.pop(address, None)

    def serves(self, address: str) -> bool:
        """``address`` is a worker registered here (in this process)."""
        return address in self._apps

    def generates(self, address: str) -> bool:
        """True when ``address`` is a worker here that starts generations directly."""
        return address in self._generate

    async def generate(self, address: str, request: Any) -> LocalGeneration:
        """Start ``request`` on the in-process worker at ``address``: admission, errors (raised
        as ``GatewayError``) and the first event as the worker's HTTP route has them; the
        events are then iterated by the caller, in its own task."""
        start = self._generate.get(address)
        if start is None:
            raise aiohttp.ClientConnectionError(f"no in-process worker at {address}")
        return await start(request)

    async def post(
        self,
        address: str, path: str, body: bytes, headers: dict[str, str] | None = None, *, read_timeout: float | None = None
    ) -> LocalResponse:
        """POST ``body`` to the in-process app at ``address``; returns once the response
        has started (status and headers known), its body still streaming. ``read_timeout``
        bounds the wait for the response to start and for each read, as aiohttp's
        ``sock_read`` does (``aiohttp.ServerTimeoutError``)."""
        app = self._apps.get(address)
        if app is None:
            raise aiohttp.ClientConnectionError(f"no in-process worker at {address}")
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": raw_headers,
            "client": ("inproc", 0),
            "server": ("inproc", 0),
        }
        resp = LocalResponse(read_timeout)
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await resp.closed.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if resp.closed.is_set():
                if resp.task is not None and not resp.task.done():
                    resp.task.cancel()  # nobody reads it: stop here (the finally blocks still run)
                return
            kind = message["type"]
            if kind == "http.response.start":
                resp.status = int(message["status"])
                resp.headers = CIMultiDictProxy(
                    CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", ()))
                )
                resp.started = True
                if not started.done():
                    started.set_result(None)
            elif kind == "http.response.body":
                chunk = message.get("body", b"")
                if chunk:
                    await resp._queue.put(chunk)
                if not message.get("more_body", False):
                    resp.finished = True
                    await resp._end(_END)

        async def run() -> None:
            try:
                await app(scope, receive, send)
            except asyncio.CancelledError:
                if not resp.closed.is_set():  # not ours: the loop is shutting down
                    if not started.done():
                        started.set_exception(aiohttp.ClientConnectionError("in-process worker stopped"))
                    elif not resp.finished:
                        resp._end_now(aiohttp.ClientPayloadError("in-process worker stopped"))
                    raise
                return
            except Exception as exc:  # becomes the caller's connection error
                if not resp.closed.is_set():
                    log.exception("in-process worker %s failed on %s", address, path)
                err = aiohttp.ClientPayloadError(f"in-process worker failed: {type(exc).__name__}")
                if not started.done():
                    started.set_exception(aiohttp.ClientConnectionError(str(err)))
                elif not resp.finished:
                    await resp._end(err)
                return
            if not started.done():
                started.set_exception(aiohttp.ClientConnectionError("in-process worker sent no response"))
            elif not resp.finished:
                await resp._end(aiohttp.ClientPayloadError("in-process worker ended without finishing its response"))

        resp.task = asyncio.create_task(run(), name=f"inproc {address}{path}")
        self._running.add(resp.task)
        resp.task.add_done_callback(self._running.discard)
        try:
            async with asyncio.timeout(read_timeout):
                await asyncio.shield(started)
        except TimeoutError:
            resp.close()
            started.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise aiohttp.ServerTimeoutError(f"in-process worker did not answer within {read_timeout:g} s") from None
        except BaseException:
            resp.close()  # cancelled while waiting: the app sees the hang-up, as over a socket
            started.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody awaits it now
            raise
        return resp
