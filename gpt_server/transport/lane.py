"""Non-generation calls from a gateway to a worker on its host, over a Unix socket.

An embeddings (rerank, classify …) request through the gateway pays two HTTP hops on top of
the model's work. The second one, gateway → worker, was most of what the gateway added: at
c=1 on two cores the gateway's CPU per embeddings request was 1.4 ms, its HTTP client alone
about a third of it, and the worker's HTTP server (uvicorn, Starlette, its middlewares) was
more again (bench/README.md, issue 23 target 3). For a worker on the gateway's host (a
loopback address, as for ``transport.direct``), the gateway sends the call over the worker's
invoke socket instead:

- The socket is a Unix stream socket in a new private directory (mode 0700), accepting only
  processes of this user (``SO_PEERCRED``) that open with the internal secret (the first
  frame of a connection; any bytes when the worker has none).
- A call frame is ``!IB`` (the body's length, the call's kind) and the body. An ``INVOKE``
  body is the same JSON bytes as ``POST /worker/invoke``; its answer is one frame ``!IH``
  (length, HTTP status) and the JSON result, or the OpenAI error body for a status other than 200.
- A ``GENERATE`` call (a chat or completion, as ``POST /worker/generate``) is answered as a
  stream (``LaneStream``): a head frame with the HTTP status (an error: its body, and nothing
  after), for 200 a flags byte and the stream's first bytes; then ``DATA`` frames of the stream's
  bytes and an ``END`` frame. Either side reads the other's frames only as fast as it takes
  them (a slow client holds the worker's writes, as over HTTP).
- A connection carries one call at a time; the gateway keeps a pool per socket, as HTTP/1.1
  keep-alive (a stream's connection goes back after its ``END``). An invoke answer may be
  written by the engine's thread that finished it (``LaneReply``, ``backends.base.ANSWER_SINK``):
  the gateway has it without waiting for the worker's event loop. A connection closed mid-call
  (the client hung up, the deadline passed) cancels the call in the worker; a stream cut short
  by the worker is a lost connection, never a short answer that looks whole.
- A socket the gateway cannot connect to (another host's path, a worker in a container) is
  left alone for a while and the call goes over HTTP; a connection lost after the call was
  sent is the worker lost, as when its HTTP connection breaks before the status line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast

__all__ = [
    "LaneServer", "LaneClient", "LaneReply", "LaneUnavailable", "LaneStream", "Streamed", "MAX_ANSWER_BYTES", "INVOKE", "GENERATE",
]

log = logging.getLogger(__name__)

_HELLO = struct.Struct("!I")  # the first frame of a connection: the secret
_REQ = struct.Struct("!IB")  # a call: its body's length, its kind
_ANS = struct.Struct("!IH")
INVOKE, GENERATE = 0, 1  # call kinds
_DATA, _END = 0, 1  # the statuses of a stream's frames after its head
_READ_HIGH = 256 * 1024  # a stream's bytes the gateway holds unread before it stops reading the socket
_MAX_SECRET = 1024
MAX_ANSWER_BYTES = 2**32 - 1  # what ``!I`` can say
_IDLE_PER_SOCKET = 64  # idle connections kept per worker
_RETRY_AFTER_S = 30.0  # a socket that could not be reached is not tried again for this long



class LaneReply:
    """A call's answer frame, which any thread may write to the gateway's connection, once
    (an engine's thread that has the result first: ``backends.base.ANSWER_SINK``). It writes
    through its own duplicate of the connection's descriptor, so a connection closed meanwhile
    is never confused with another; what a full socket leaves unwritten the event loop writes.
    The duplicate is taken by ``claim``, on the loop, for the calls that may answer this way
    (embeddings), not for every call."""

    def __init__(self, fd: int) -> None:
        self._src, self._fd, self._closed = fd, -1, False
        self._lock = threading.Lock()
        self.sent = False
        self.rest = b""  # of the frame, for the loop to write

    def claim(self) -> bool:
        """Make the reply sendable from another thread (on the event loop, while the call runs);
        whether it is."""
        with self._lock:
            if self._fd < 0 and not self._closed:
                try:
                    self._fd = os.dup(self._src)
                except OSError:
                    return False
            return self._fd >= 0

    def send(self, body: bytes) -> bool:
        """Write ``body`` as the 200 answer now; whether it went."""
        frame = _frame(200, body)
        with self._lock:
            if self.sent or self._fd < 0:
                return False
            try:
                n = os.write(self._fd, frame)
            except OSError:  # full (the loop answers as usual) or gone (the loop sees it too)
                return False
            self.sent, self.rest = True, frame[n:]
            return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


Handler = Callable[[bytes, LaneReply | None], Awaitable[tuple[int, bytes]]]


@dataclass
class Streamed:
    """A ``GENERATE`` call's 200 answer: ``flags`` (a byte) and ``first`` go in the head frame,
    each of ``rest`` in a ``DATA`` frame; ``on_close`` runs when the stream is over, however it ends."""

    flags: int
    first: bytes
    rest: AsyncGenerator[bytes, None]
    on_close: Callable[[], Awaitable[None]]


StreamHandler = Callable[[bytes], Awaitable["tuple[int, bytes] | Streamed"]]


class LaneUnavailable(OSError):
    """The worker's invoke socket could not be reached: the call was not sent (use HTTP)."""


def _peer_uid(transport: asyncio.BaseTransport) -> int | None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
    except OSError:
        return None


def _frame(status: int, body: bytes) -> bytes:
    return _ANS.pack(len(body), status) + body


class _ServerConn(asyncio.Protocol):
    """One gateway connection to the worker: the secret, then calls one at a time."""

    def __init__(self, server: LaneServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.greeted = False
        self.task: asyncio.Task[None] | None = None
        self.skip = 0  # bytes of a refused call still to drop
        self.writable: asyncio.Future[None] | None = None  # while the gateway reads nothing more

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport instances
        uid = _peer_uid(transport)
        if uid != os.getuid():
            log.warning("invoke socket: refused a process of uid %s", uid)
            self.transport.abort()
            return
        self.server.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        self.transport = None
        self.resume_writing()
        if self.task is not None:
            self.task.cancel()  # nobody to answer: the work behind it stops

    def pause_writing(self) -> None:
        if self.writable is None:
            self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        w, self.writable = self.writable, None
        if w is not None and not w.done():
            w.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.skip:
            self._skip()
        self._next()

    def _skip(self) -> None:
        drop = min(self.skip, len(self.buf))
        del self.buf[:drop]
        self.skip -= drop
        if not self.skip:
            self._next()

    def _next(self) -> None:
        """Start the next complete call in the buffer (none while one runs)."""
        t = self.transport
        head = _REQ if self.greeted else _HELLO
        if t is None or self.task is not None or self.skip or len(self.buf) < head.size:
            return
        n, kind = head.unpack_from(self.buf) if self.greeted else (*head.unpack_from(self.buf), INVOKE)
        limit = self.server.max_frame if self.greeted else _MAX_SECRET
        if n > limit:
            if not self.greeted:
                t.close()
                return
            t.write(_frame(413, self.server.too_large(limit)))  # answered; its bytes are skipped as they come
            self.skip = head.size + n
            self._skip()
            return
        if len(self.buf) < head.size + n:
            return
        body = bytes(self.buf[head.size : head.size + n])
        del self.buf[: head.size + n]
        if not self.greeted:
            if not self.server.secret_ok(body):
                log.warning("invoke socket: a connection without the internal secret")
                t.close()
                return
            self.greeted = True
            self._next()
            return
        loop = asyncio.get_running_loop()
        if kind == GENERATE and self.server.streams is not None:
            self.task = loop.create_task(self._stream(body))
        elif kind == INVOKE:
            self.task = loop.create_task(self._call(body))
        else:
            t.write(_frame(400, self.server.unknown_call(kind)))
            self._next()

    def _reply(self) -> LaneReply | None:
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        fd = sock.fileno() if sock is not None else -1
        return LaneReply(fd) if fd >= 0 else None

    async def _call(self, body: bytes) -> None:
        reply = self._reply()
        try:
            status, out = await self.server.handler(body, reply)
        except Exception:  # the handler answers errors itself: this is a bug
            log.exception("invoke socket: the call failed")
            if self.transport is not None:
                self.transport.close()
            return
        finally:
            self.task = None
            if reply is not None:
                reply.close()
        t = self.transport
        if t is None:
            return
        if reply is not None and reply.sent:  # written by the engine's thread
            if reply.rest:
                t.write(reply.rest)
        else:
            _write(t, status, out)
        self._next()

    async def _stream(self, body: bytes) -> None:
        """A ``GENERATE`` call: its head frame, its ``DATA`` frames as they come, its ``END``."""
        assert self.server.streams is not None
        answer: tuple[int, bytes] | Streamed | None = None
        ended = False
        try:
            answer = await self.server.streams(body)
            t = self.transport
            if isinstance(answer, tuple):
                if t is not None:
                    _write(t, *answer)
                ended = True
                return
            if t is None:
                return
            _write(t, 200, bytes((answer.flags,)) + answer.first)
            async for chunk in answer.rest:
                if not chunk:
                    continue
                t = self.transport
                if t is None:
                    return
                _write(t, _DATA, chunk)
                if self.writable is not None:
                    await self.writable
            if self.transport is not None:
                self.transport.write(_ANS.pack(0, _END))
                ended = True
        except Exception:  # the stream broke after its head: the gateway sees the connection end
            log.exception("invoke socket: a stream failed")
        finally:
            self.task = None
            if not ended and self.transport is not None:
                self.transport.abort()  # cut short: the gateway must not take it for whole
            if isinstance(answer, Streamed):
                try:
                    try:
                        await answer.rest.aclose()
                    finally:
                        await answer.on_close()
                except Exception:
                    log.exception("invoke socket: closing a stream failed")
            if ended:
                self._next()


def _write(t: asyncio.Transport, status: int, out: bytes) -> None:
    if len(out) < 64 * 1024:
        t.write(_frame(status, out))
    else:
        t.writelines((_ANS.pack(len(out), status), out))


class LaneServer:
    """The worker's invoke socket; ``handler(body) -> (status, answer)`` runs each ``INVOKE``
    call, ``streams(body)`` each ``GENERATE`` call."""

    def __init__(
        self,
        handler: Handler,
        *,
        secret_ok: Callable[[bytes], bool],
        max_frame: int,
        too_large: Callable[[int], bytes],
        streams: StreamHandler | None = None,
        unknown_call: Callable[[int], bytes] = lambda kind: b"",
    ) -> None:
        """``secret_ok``: whether a connection's first frame is the internal secret;
        ``max_frame``: the largest call body taken (``too_large(limit)``, the 413's body, answers a larger one);
        ``streams``: runs a ``GENERATE`` call (none: such calls, and calls of any other kind,
        are answered 400 with ``unknown_call(kind)``)."""
        self.handler = handler
        self.streams = streams
        self.unknown_call = unknown_call
        self.secret_ok = secret_ok
        self.max_frame = max_frame
        self.too_large = too_large
        self.path = ""
        self._dir = ""
        self._server: asyncio.AbstractServer | None = None
        self.conns: set[_ServerConn] = set()

    async def start(self) -> str:
        """Listen (on the running loop); the socket's path."""
        self._dir = tempfile.mkdtemp(prefix="gpt-server-invoke-")  # 0700
        path = os.path.join(self._dir, "i.sock")
        self._server = await asyncio.get_running_loop().create_unix_server(lambda: _ServerConn(self), path=path)
        os.chmod(path, 0o600)
        self.path = path
        return path

    async def end_calls(self, grace: float = 5.0) -> None:
        """Cut every connection and wait (up to ``grace`` seconds) for the calls on them to wind
        down: a stopping worker's streams end before its engine closes."""
        tasks = [conn.task for conn in self.conns if conn.task is not None]
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    def stop_accepting(self) -> None:
        """No new connections (a draining worker); calls on open ones still run."""
        if self._server is not None:
            self._server.close()

    def close(self) -> None:
        self.stop_accepting()
        self._server = None
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        self.conns.clear()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""


class _ClientConn(asyncio.Protocol):
    """One connection to a worker's invoke socket, one call at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.streaming = False  # the call waited for is a stream: its frames go on after a 200 head
        self.stream: LaneStream | None = None  # the stream being read (after its head, before its end)
        self.opened: LaneStream | None = None  # the stream the last call's head began, for the caller
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        lost = ConnectionResetError("the worker closed its invoke connection")
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_exception(lost)
        s, self.stream = self.stream, None
        if s is not None:
            s._lost(lost)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= _ANS.size:
            n, status = _ANS.unpack_from(self.buf)
            if len(self.buf) < _ANS.size + n:
                return
            out = bytes(self.buf[_ANS.size : _ANS.size + n])
            del self.buf[: _ANS.size + n]
            if self.stream is not None:
                if status == _DATA:
                    self.stream._feed(out)
                    continue
                if status == _END and not out:
                    s, self.stream = self.stream, None
                    s._end()
                    continue
                self.close()  # out of step
                return
            w, self.waiter = self.waiter, None
            if w is None or w.done():  # an answer nobody asked for: the connection is out of step
                self.close()
                return
            if self.streaming and status == 200:
                self.streaming = False
                self.stream = self.opened = LaneStream(self, out)
                w.set_result((status, b""))
                continue
            if self.buf:  # nothing may follow a whole answer: out of step
                w.set_exception(ConnectionResetError("the worker's invoke connection is out of step"))
                self.close()
                return
            w.set_result((status, out))

    async def call(self, body: bytes, kind: int = INVOKE) -> tuple[int, bytes]:
        t = self.transport
        if t is None:
            raise ConnectionResetError("the worker closed its invoke connection")
        self.waiter = asyncio.get_running_loop().create_future()
        self.streaming, self.opened = kind == GENERATE, None
        if len(body) < 64 * 1024:
            t.write(_REQ.pack(len(body), kind) + body)
        else:
            t.writelines((_REQ.pack(len(body), kind), body))
        return await self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class LaneStream:
    """A ``GENERATE`` call's 200 answer, read as an HTTP response's body is (``content.iter_any()``,
    ``read()``, ``close()``). ``flags``: the head's flags byte; ``headers``: for the caller to fill.
    Closing it before its end cuts the connection, which stops the call in the worker."""

    status = 200

    def __init__(self, conn: _ClientConn, head: bytes) -> None:
        self.conn = conn
        self.flags = head[0] if head else 0
        self.headers: dict[str, str] = {}
        self.content = self
        self._chunks: list[bytes] = [head[1:]] if len(head) > 1 else []
        self._held = len(head) - 1 if head else 0
        self._paused = False
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.on_end: Callable[[_ClientConn], None] | None = None  # the connection is free again

    def _wake(self) -> None:
        w, self._waiter = self._waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._held += len(data)
        if self._held > _READ_HIGH and not self._paused and self.conn.transport is not None:
            self._paused = True
            self.conn.transport.pause_reading()
        self._wake()

    def _end(self) -> None:
        self._ended = True
        if self._paused and self.conn.transport is not None:
            self.conn.transport.resume_reading()
        self._paused = False
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end(self.conn)
        self._wake()

    def _lost(self, exc: BaseException) -> None:
        self._error = exc
        self._wake()

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The stream's bytes as they come (what arrived since the last read, joined); a lost
        connection raises ``ConnectionResetError``."""
        while True:
            if self._chunks:
                out = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._held = 0
                if self._paused and not self._ended and self.conn.transport is not None:
                    self._paused = False
                    self.conn.transport.resume_reading()
                yield out
                continue
            if self._ended:
                return
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_any()])

    def close(self) -> None:
        """Done with it: before its end, the connection is cut (the worker stops the call)."""
        self.on_end = None
        if not self._ended:
            self._ended = True
            self.conn.stream = None
            self.conn.close()
        self._wake()

    release = close


class LaneClient:
    """The gateway's side: a pool of connections per worker socket."""

    def __init__(self, secret: str | None) -> None:
        secret_bytes = (secret or "").encode()
        self._hello = _HELLO.pack(len(secret_bytes)) + secret_bytes
        self._idle: dict[str, list[_ClientConn]] = {}
        self._unreachable: dict[str, float] = {}  # path → monotonic time to try again

    def usable(self, path: str) -> bool:
        until = self._unreachable.get(path)
        if until is None:
            return True
        if time.monotonic() >= until:
            del self._unreachable[path]
            return True
        return False

    async def _connect(self, path: str) -> _ClientConn:
        try:
            _, conn = await asyncio.get_running_loop().create_unix_connection(_ClientConn, path)
        except OSError as exc:
            self._unreachable[path] = time.monotonic() + _RETRY_AFTER_S
            log.info("invoke socket %s not reachable (%s): calls go over HTTP", path, type(exc).__name__)
            raise LaneUnavailable(str(exc)) from None
        assert conn.transport is not None
        conn.transport.write(self._hello)
        return conn

    def _take(self, path: str) -> _ClientConn | None:
        idle = self._idle.get(path)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def call(self, path: str, body: bytes) -> tuple[int, bytes]:
        """(status, answer) of one ``INVOKE`` call; ``LaneUnavailable`` when it could not be sent,
        ``ConnectionError`` when the connection was lost after it was."""
        conn = self._take(path) or await self._connect(path)
        try:
            answer = await conn.call(body)
        except BaseException:
            conn.close()  # cancelled or lost mid-call: the worker stops the call
            raise
        self._give_back(path, conn)
        return answer

    async def generate(self, path: str, body: bytes) -> tuple[int, bytes] | LaneStream:
        """A ``GENERATE`` call: its ``LaneStream`` (status 200; the caller reads or closes it),
        or (status, error body). Fails as ``call``."""
        conn = self._take(path) or await self._connect(path)
        try:
            status, out = await conn.call(body, GENERATE)
        except BaseException:
            conn.close()
            raise
        stream, conn.opened = conn.opened, None
        if status != 200 or stream is None:
            self._give_back(path, conn)
            return status, out
        if stream._ended:  # it ended in the same read as its head
            stream.on_end = None
            self._give_back(path, conn)
        else:
            stream.on_end = lambda c: self._give_back(path, c)
        return stream

    def _give_back(self, path: str, conn: _ClientConn) -> None:
        if conn.closed:
            return
        idle = self._idle.setdefault(path, [])
        if len(idle) < _IDLE_PER_SOCKET:
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
