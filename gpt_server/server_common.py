"""Pieces every HTTP app here shares: error rendering, body limits, logging, serving."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

import orjson
import uvicorn
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import GatewayError, InternalError, error_body

__all__ = [
    "ClosingStreamingResponse",
    "DisconnectWatch",
    "StreamAborted",
    "aclose_then",
    "FastJSONResponse",
    "install_error_handlers",
    "error_response",
    "validation_message",
    "BodyLimitMiddleware",
    "setup_logging",
    "bind_socket",
    "make_server",
    "run_async",
]

log = logging.getLogger("gpt_server")


class StreamAborted(Exception):
    """A response body failed after its status line was sent: the response is cut (the
    server closes the connection), so the client sees an incomplete body, never a short
    one that looks complete."""


class DisconnectWatch:
    """``async with DisconnectWatch(receive) as client:`` — the block is cancelled as soon
    as the client disconnects, and then ends quietly with ``client.gone`` True.

    One task waits on ``receive()`` for ``http.disconnect`` meanwhile (no polling). Only its
    own cancellation is swallowed; any other (shutdown, a caller's timeout) goes on. Enter
    it once the request body has been read: it consumes what ``receive`` reports.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.gone = False

    async def __aenter__(self) -> DisconnectWatch:
        self._task = asyncio.current_task()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        assert self._watcher is not None and self._task is not None
        # not awaited: the block's cleanup runs at once; the watcher ends at its next step
        # (before it could cancel anything) and nobody needs what it would have read
        self._watcher.cancel()
        self._watcher.add_done_callback(_retrieve)
        if not self.gone:
            return False
        # our cancel: swallowed when it was the only one
        return self._task.uncancel() == 0 and exc_type is asyncio.CancelledError


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a failed receive is not worth a "never retrieved" warning


class ClosingStreamingResponse(StreamingResponse):
    """A stream with one ending per outcome, whose iterator is always closed.

    - The status line waits for the first chunk: a ``GatewayError`` raised before it is
      answered as that error (its status, the OpenAI body), any other failure as a 500.
    - A failure after the status line aborts the response (``StreamAborted``): the client
      sees an incomplete transfer, not a short body that looks complete.
    - A client that disconnects (``DisconnectWatch``) cancels the stream, however long it
      waits for its next chunk.

    The iterator is closed when the response ends, however it ends, so the work behind it
    stops at once instead of whenever the garbage collector finalises it. ``on_close``
    (sync or async) runs then too: an iterator that never started has no cleanup of its own.
    """

    def __init__(self, content: Any, *, on_close: Callable[[], Any] | None = None, **kw: Any) -> None:
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with DisconnectWatch(receive):
                await self._stream(scope, receive, send)
        finally:
            await aclose_then(self.body_iterator, self._on_close)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = aiter(self.body_iterator)
        try:
            first = await anext(chunks, b"")
        except GatewayError as exc:
            await error_response(exc)(scope, receive, send)
            return
        except Exception:
            log.exception("stream failed before its first byte")
            await error_response(InternalError("internal error while streaming", code="internal_error"))(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            if first:
                await self._send_chunk(send, first)
            async for chunk in chunks:
                await self._send_chunk(send, chunk)
        except OSError:
            return  # ASGI 2.4: the client is gone (a send raised); nothing more to send
        except Exception as exc:
            if isinstance(exc, GatewayError):
                log.warning("stream cut after its status line: %s", exc.message)
            else:
                log.error("stream cut after its status line", exc_info=exc)
            # the cause is logged above; the server logs this one and closes the connection
            raise StreamAborted(str(exc) or type(exc).__name__) from None
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_chunk(self, send: Send, chunk: Any) -> None:
        body = chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset)
        await send({"type": "http.response.body", "body": body, "more_body": True})


async def aclose_then(iterator: Any, on_close: Callable[[], Any] | None) -> None:
    """Close ``iterator`` if it can be closed, then run ``on_close`` (sync or async), also
    when closing failed."""
    try:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
    finally:
        if on_close is not None:
            done = on_close()
            if inspect.isawaitable(done):
                await done


class FastJSONResponse(Response):
    """JSON rendered with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: GatewayError) -> FastJSONResponse:
    return FastJSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


def validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """First validation error → (message, param) in the OpenAI style."""
    if not errors:
        return "invalid request", None
    e = errors[0]
    loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
    # drop pydantic's union-member markers such as 'str' or 'list[int]'
    loc = [p for p in loc if not any(ch in p for ch in "[]") and p not in ("str", "int", "float", "function-after")]
    param = ".".join(loc) or None
    msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
    if e.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if e.get("type") == "missing":
        return f"'{param}' is a required property", param
    return (f"{param}: {msg}" if param else msg), param


def install_error_handlers(app: Starlette) -> None:
    """OpenAI-format errors for a FastAPI or a plain Starlette app."""

    async def _gateway_error(request: Request, exc: GatewayError) -> FastJSONResponse:
        return error_response(exc)

    async def _validation_error(request: Request, exc: RequestValidationError) -> FastJSONResponse:
        message, param = validation_message(list(exc.errors()))
        return FastJSONResponse(error_body(message, "invalid_request_error", param, None), status_code=400)

    async def _http_error(request: Request, exc: StarletteHTTPException) -> FastJSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        etype = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return FastJSONResponse(
            error_body(str(exc.detail), etype, None, code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def _unexpected(request: Request, exc: Exception) -> FastJSONResponse:
        if not isinstance(exc, StreamAborted):  # logged where the stream was cut
            log.exception("unhandled error on %s %s", request.method, request.url.path)
        return FastJSONResponse(
            error_body("internal server error", "server_error", None, "internal_error"), status_code=500
        )

    app.add_exception_handler(GatewayError, _gateway_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)


class BodyLimitMiddleware:
    """Refuse bodies above ``limit`` bytes with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    too_big = int(v) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
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
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = orjson.dumps(
            error_body(f"request body larger than {self.limit} bytes", "invalid_request_error", None, "request_too_large")
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


def setup_logging(level: str | None = None) -> None:
    lvl = (level or os.environ.get("GPT_SERVER_LOG_LEVEL") or "info").upper()
    logging.basicConfig(
        level=getattr(logging, lvl, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    if lvl != "DEBUG":
        logging.getLogger("httpx").setLevel(logging.WARNING)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind now (port 0 = ephemeral) so the real port is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def make_server(app: ASGIApp, sock: socket.socket, *, graceful: float = 10.0) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=int(graceful) or None,
        lifespan="on",
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
