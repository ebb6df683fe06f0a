"""Streams a worker writes straight to the client's connection (a worker on the gateway's host).

Relaying a stream costs the gateway a read, a parse, a render and a write per token, on
top of the worker's own work: on two cores beside a running decode that was 0.2–0.3 ms of
every token and part of the time to first token (bench/README.md). For a chat or
completion stream whose worker runs on the gateway's host, the gateway hands the client's
socket to the worker instead, and the worker writes the stream's chunks itself:

1. The gateway sends the generate request with a token: over the worker's invoke socket
   (``transport.lane``, a ``GENERATE`` call), or ``POST /worker/generate`` with the header
   ``x-gpt-server-direct: <token>`` where it has none. Below, "status line" and "header" are
   that call's head frame and its flags where it goes over the socket.
   The worker admits the request as always (an error is its HTTP answer, as always) and
   answers 200 with the stream's first event, then waits for the socket. Where the engine's
   thread writes the stream's deltas (no parser between them and the client,
   ``protocol.deltas``) it answers as soon as the engine has taken the request, with no event
   and the header ``x-gpt-server-hand-now`` (``HAND_NOW_HEADER``): the hand-off then happens
   during the prefill and the engine's thread writes the first token to the client itself (a
   failure before it is an error event in the stream, as a later one is).
2. The gateway writes the response head and the first event's chunks (the role chunks with the
   first token, as when relayed; with ``HAND_NOW_HEADER`` the role chunks alone), and once they
   have left (its write buffer is empty) sends the worker, over the worker's hand-off socket (a Unix ``SOCK_SEQPACKET`` socket in a private
   directory; only this user's processes may connect), the token, the stream's ``ChunkShape``,
   the time left and a duplicate of the client connection's descriptor (``SCM_RIGHTS``). Where
   it cannot hand it over it sends ``none``, and the worker sends the rest of its events to the
   gateway as usual. The hand-off happens while the next token (or the first) is decoded.
3. The worker writes each further event's chunks as HTTP/1.1 chunks of SSE, keep-alive
   comments when idle, an error event where the generation fails, its deadline passes or the
   gateway asks it to stop (the drain deadline), then ``[DONE]`` and the body's last chunk in
   one write (a client that stops reading at ``[DONE]`` finds the response complete and reuses
   the connection); then it answers the gateway with the usage and an ``EndEvent`` (after a
   hand-off before the first token, first an empty delta ``held`` since that token went out: the
   gateway's metrics time it). The gateway completes the response in its server without writing the last chunk again
   (``web.serve.ConnectionTap``), so the connection serves the client's next request.

The client's hang-up is seen by the gateway as before (it closes the worker's request, which
stops the generation); the worker's next write fails too. Only connections the gateway
serves in plain HTTP/1.1 (no TLS) and workers that advertise a hand-off socket and run on a
loopback address qualify; everything else is relayed.
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import queue
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..chat.chunks import ChunkShape
from ..errors import TimeoutError_, error_from_body
from ..protocol.deltas import DeltaWriter
from ..protocol.worker import DeltaEvent, EndEvent, ErrorEvent, Event, TokenLogprob, UsageEvent
from ..web.lifecycle import shutdown_error
from ..web.serve import TRANSPORT_KEY

__all__ = [
    "DIRECT_HEADER",
    "HAND_NOW_HEADER",
    "TRANSPORT_KEY",
    "HandoffClient",
    "HandoffServer",
    "Handoff",
    "client_transport",
    "stream_token",
    "write_stream",
    "is_loopback_address",
]

log = logging.getLogger(__name__)

DIRECT_HEADER = "x-gpt-server-direct"
# on the worker's answer: the stream has no first event yet, hand the connection over now
HAND_NOW_HEADER = "x-gpt-server-hand-now"
_MAX_MESSAGE = 16 * 1024
_DONE = b"data: [DONE]\n\n"
_LAST_CHUNK = b"0\r\n\r\n"
_KEEPALIVE = b": keep-alive\n\n"
_STALE_AFTER = 30.0  # a hand-off nobody took (its request failed in between) is closed after this
# a stream whose end (its deadline's error, a stop's) cannot be written this long, because the
# client stopped reading, has its connection shut down: no write waits on a client for ever
_CUT_GRACE = 2.0


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def stream_token(value: str | None) -> str | None:
    """A stream's hand-off token as the gateway makes them (``secrets.token_hex(16)``): 32 to
    64 lowercase hex digits; anything else None (the stream is relayed)."""
    if value is None or not 32 <= len(value) <= 64 or value.strip("0123456789abcdef"):
        return None
    return value


def is_loopback_address(address: str) -> bool:
    """A worker URL on this host's loopback (``http://127.0.0.1:…``, ``[::1]``, ``localhost``)."""
    rest = address.split("://", 1)[-1]
    host = rest[1:].split("]", 1)[0] if rest.startswith("[") else rest.split(":", 1)[0].split("/", 1)[0]
    return host == "localhost" or host == "::1" or host.startswith("127.")


def client_transport(scope: Mapping[str, Any]) -> Any | None:
    """The client connection's transport where a worker may write to it: plain HTTP/1.1 served
    by our uvicorn protocol (``web.serve``), no TLS, still open."""
    ext = scope.get("extensions")
    transport = ext.get(TRANSPORT_KEY) if ext else None
    if transport is None or scope.get("http_version") != "1.1" or scope.get("scheme") != "http":
        return None
    if transport.is_closing() or transport.get_extra_info("sslcontext") is not None:
        return None
    return transport


# ---- the gateway's side ---------------------------------------------------------------------------


class HandoffClient:
    """The gateway's connections to workers' hand-off sockets, one per socket path, opened on
    first use; a broken one is dropped (and opened again next time). Each new connection (a new
    or restarted worker) first closes those whose worker has gone."""

    def __init__(self) -> None:
        self._socks: dict[str, socket.socket] = {}

    def _prune(self) -> None:
        """Close the connections whose worker closed its end (it exited, or was killed: the
        kernel closes it then). A worker never sends on them: readable means closed."""
        for path, sock in list(self._socks.items()):
            try:
                sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue  # open, nothing to read
            except OSError:
                pass
            self._drop(path)

    def _sock(self, path: str) -> socket.socket:
        sock = self._socks.get(path)
        if sock is None:
            self._prune()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                sock.setblocking(False)  # a Unix socket connects at once or fails (EAGAIN: its backlog is full)
                sock.connect(path)
            except OSError:
                sock.close()
                raise
            self._socks[path] = sock
        return sock

    def reachable(self, path: str) -> bool:
        """Connected to the hand-off socket at ``path`` (a worker in another mount namespace is not)."""
        try:
            self._sock(path)
        except OSError:
            return False
        return True

    def _send(self, path: str, message: dict[str, Any], fd: int | None = None) -> bool:
        data = orjson.dumps(message)
        for _ in range(2):  # a connection the worker closed (it restarted): once more, new
            try:
                sock = self._sock(path)
            except OSError:
                return False
            try:
                if fd is None:
                    sock.send(data)
                else:
                    socket.send_fds(sock, [data], [fd])
                return True
            except BlockingIOError:
                return False  # the worker is not reading its hand-offs: relay instead
            except OSError:
                self._drop(path)
        return False

    def _drop(self, path: str) -> None:
        sock = self._socks.pop(path, None)
        if sock is not None:
            sock.close()

    def hand(self, path: str, token: str, fd: int, shape: ChunkShape, *, timeout: float, limit: float, keepalive: float) -> bool:
        """Give the worker the client connection ``fd`` for the stream ``token``, with the seconds
        the stream has left (``timeout``) of the request timeout (``limit``); False when it could
        not be sent (then the caller says ``decline``)."""
        msg = {
            "op": "stream", "token": token, "shape": shape.model_dump(mode="json"), "timeout": timeout, "limit": limit, "keepalive": keepalive,
        }
        return self._send(path, msg, fd)

    def decline(self, path: str, token: str) -> None:
        """The stream ``token`` is relayed: the worker answers with its events."""
        self._send(path, {"op": "none", "token": token})

    def stop(self, path: str, token: str) -> bool:
        """Ask the worker to end the stream ``token`` now with the shutdown's error event (the
        drain deadline)."""
        return self._send(path, {"op": "stop", "token": token})

    def close(self) -> None:
        for path in list(self._socks):
            self._drop(path)


# ---- the worker's side ----------------------------------------------------------------------------


@dataclass
class Handoff:
    """One stream handed to this worker: the client's socket (None: relay as usual)."""

    token: str
    sock: socket.socket | None
    shape: ChunkShape | None = None
    deadline: float = 0.0  # event-loop time
    limit: float = 0.0  # the request timeout, for the timeout's message
    keepalive: float = 15.0
    stopped: asyncio.Future[str] | None = None
    at: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()  # this process's descriptor only: the connection stays the gateway's
            self.sock = None


class HandoffServer:
    """The worker's hand-off socket: a SOCK_SEQPACKET listener in a new private directory
    (mode 0700), accepting only processes of this user; each message names a stream token."""

    def __init__(self) -> None:
        self.path = ""
        self._dir = ""
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._waiting: dict[str, asyncio.Future[Handoff]] = {}
        self._arrived: dict[str, Handoff] = {}
        self._running: dict[str, Handoff] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> str:
        """Listen (on the running loop); the socket's path."""
        self._loop = asyncio.get_running_loop()
        self._dir = tempfile.mkdtemp(prefix="gpt-server-handoff-")  # 0700
        self.path = os.path.join(self._dir, "w.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind(self.path)
        os.chmod(self.path, 0o600)
        sock.listen(64)
        sock.setblocking(False)
        self._listener = sock
        self._loop.add_reader(sock.fileno(), self._accept)
        return self.path

    def close(self) -> None:
        loop = self._loop
        if self._listener is not None and loop is not None:
            loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for conn in list(self._conns):
            self._close_conn(conn)
        for h in [*self._arrived.values(), *self._running.values()]:
            h.close()
        self._arrived.clear()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""

    def _accept(self) -> None:
        assert self._listener is not None and self._loop is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                log.exception("hand-off socket: accept failed")
                return
            uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
            if uid != os.getuid():
                log.warning("hand-off socket: refused a process of uid %d", uid)
                conn.close()
                continue
            conn.setblocking(False)
            self._conns.add(conn)
            self._loop.add_reader(conn.fileno(), self._read, conn)

    def _close_conn(self, conn: socket.socket) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            if self._loop is not None:
                self._loop.remove_reader(conn.fileno())
            conn.close()

    def _read(self, conn: socket.socket) -> None:
        while True:
            fds = array.array("i")
            try:
                data, ancdata, flags, _ = conn.recvmsg(_MAX_MESSAGE, socket.CMSG_SPACE(4 * fds.itemsize))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close_conn(conn)
                return
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
            if not data and not fds:
                self._close_conn(conn)  # the gateway closed it
                return
            try:
                self._message(orjson.loads(data), list(fds), flags)
            except Exception:
                log.exception("hand-off socket: a malformed message")
                for fd in fds:
                    os.close(fd)

    def _message(self, msg: dict[str, Any], fds: list[int], flags: int) -> None:
        op, token = msg.get("op"), stream_token(str(msg.get("token", "")))
        if token is None:
            raise ValueError("no stream token")  # _read closes the descriptors
        if op == "stop":
            for fd in fds:
                os.close(fd)
            h = self._running.get(token)
            if h is not None and h.stopped is not None and not h.stopped.done():
                h.stopped.set_result("shutdown")
            return
        h = Handoff(token, None)
        if op == "stream" and len(fds) == 1 and not flags & socket.MSG_CTRUNC:
            assert self._loop is not None
            h.shape = ChunkShape.model_validate(msg["shape"])
            h.deadline = self._loop.time() + float(msg["timeout"])
            h.limit = float(msg.get("limit", msg["timeout"]))
            h.keepalive = max(0.5, float(msg.get("keepalive", 15.0)))
            h.sock = socket.socket(fileno=fds.pop())
            h.sock.setblocking(False)  # it is already (the gateway's loop set it): for sock_sendall
        for fd in fds:
            os.close(fd)
        waiter = self._waiting.pop(token, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(h)
            return
        self._prune()
        self._arrived[token] = h

    def _prune(self) -> None:
        now = time.monotonic()
        for token in [t for t, h in self._arrived.items() if now - h.at > _STALE_AFTER]:
            self._arrived.pop(token).close()

    async def take(self, token: str, timeout: float = 10.0) -> Handoff:
        """The hand-off of stream ``token`` (its socket None: relay) — the gateway sends one
        right after this worker's answer; none within ``timeout`` is a relay too."""
        h = self._arrived.pop(token, None)
        if h is None:
            fut: asyncio.Future[Handoff] = asyncio.get_running_loop().create_future()
            self._waiting[token] = fut
            try:
                h = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                log.warning("no hand-off came for a direct stream within %gs; relaying it", timeout)
                return Handoff(token, None)
            finally:
                self._waiting.pop(token, None)
        if h.sock is not None:
            h.stopped = asyncio.get_running_loop().create_future()
            self._running[token] = h
        return h

    def finished(self, h: Handoff) -> None:
        self._running.pop(h.token, None)
        h.close()


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("a direct stream's keep-alive failed: %r", task.exception())


class _Writer:
    """Writes one handed-off stream: HTTP/1.1 chunks, one per event (or keep-alive), never two
    at once. Timers, not a task, end the stream at its deadline, notice a stop and write
    keep-alives when it is idle.

    Deltas may also come from the engine's thread (``protocol.deltas``): ``write_delta`` renders
    one and appends it to ``pending``; ``kick`` has the sender thread (``_SendThread``) send it
    with one non-blocking send. Every write of the event loop's takes ``pending`` first, so
    nothing overtakes a delta taken before it; what a send leaves (the client reads slowly) stays
    in ``pending`` for the loop, which waits until the socket can take it."""

    def __init__(self, h: Handoff, main: asyncio.Task[Any] | None) -> None:
        """``main``: the task writing the stream's events (cancelled where the stream must end
        while it waits for the next one)."""
        assert h.sock is not None and h.stopped is not None and h.shape is not None
        self.h = h
        self.sock = h.sock
        self.shape = h.shape
        self.loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()  # the event loop's writes, one at a time
        self.tlock = threading.Lock()  # what follows, between the loop, the engine and the sender thread
        self.pending = b""  # deltas taken on the engine thread, not sent yet
        self.first: float | None = None  # when the first text was taken (``time.perf_counter``)
        self.queued = False  # the sender thread has this stream to send
        self.loop_writing = False  # a write of the loop's is under way (it sends ``pending`` after)
        self.closed = False  # the stream's end is written or being written: nothing more comes
        self.cut = False  # the connection was shut down: the client took nothing after the stream's end
        self.last = self.loop.time()
        self.ending: str | None = None
        self.main = main
        self.main_writing = False
        self.main_cancelled = False  # ``_end`` cancelled ``main`` (any other cancel is the caller's)
        self._ping: asyncio.Task[None] | None = None
        self._deadline = self.loop.call_at(h.deadline, self._end, "timeout")
        self._tick = self.loop.call_later(h.keepalive, self._idle)
        self._cutoff: asyncio.TimerHandle | None = None
        h.stopped.add_done_callback(self._stopped)

    async def send(self, data: bytes, last: bool = False, main: bool = True) -> None:
        """One HTTP/1.1 chunk after what ``pending`` holds (none for empty ``data``); ``last``:
        with the body's last chunk after it (the gateway's server then skips its own,
        ``web.serve.ConnectionTap``)."""
        self.main_writing = main
        try:
            async with self.lock:
                tail = (_frame(data) if data else b"") + (_LAST_CHUNK if last else b"")
                while True:
                    with self.tlock:
                        out, self.pending, tail = self.pending + tail, b"", b""
                        self.loop_writing = bool(out)
                    if not out:
                        return
                    try:
                        await self.loop.sock_sendall(self.sock, out)
                        self.last = self.loop.time()
                    finally:
                        with self.tlock:
                            self.loop_writing = False
        finally:
            if main:
                self.main_writing = False

    # ---- deltas from the engine's thread (protocol.deltas) ------------------------------------
    def write_delta(self, index: int, text: str, logprobs: list[TokenLogprob] | None) -> bool:
        """On the engine thread: a delta's chunks taken for the connection (True), or not where
        the stream ends (False: the caller hands the delta to the loop)."""
        with self.tlock:
            if self.closed or self.ending is not None:
                return False
            body = b"".join([_sse(c) for c in self.shape.text_chunks(index, text, logprobs)])
            if body:
                self.pending += _frame(body)
                if self.first is None:
                    self.first = time.perf_counter()
            return True

    def kick(self, here: bool = False) -> None:
        """On the engine thread, once a step: what was taken is sent, by the sender thread, or
        with ``here`` on this thread (one non-blocking send, ``send_pending``)."""
        with self.tlock:
            if not self.pending or self.queued or self.loop_writing or self.closed:
                return  # nothing to send, or a send that will take it is on its way
            self.queued = True
        if here:
            self.send_pending()
        else:
            _send_thread().put(self)

    def send_pending(self) -> None:
        """On the sender thread (or the engine's, ``kick``): one non-blocking send of ``pending``."""
        with self.tlock:
            self.queued = False
            if not self.pending or self.loop_writing or self.closed:
                return
            data, self.pending = self.pending, b""
            try:
                n = self.sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError as exc:  # the connection broke: the loop's next write raises it
                log.debug("a direct stream's send failed: %r", exc)
                n = len(data)
            self.pending = data[n:]
            if self.pending:  # the client reads slowly: the loop waits until it can write the rest
                self.loop.call_soon_threadsafe(self._flush)
            else:
                self.last = self.loop.time()  # the loop's clock (read only: safe from this thread)

    def _flush(self) -> None:
        if self.pending and not self.closed:
            task = self.loop.create_task(self.send(b"", main=False))
            task.add_done_callback(_retrieve)

    # ---- endings and keep-alives ----------------------------------------------------------------
    def _idle(self) -> None:
        idle = self.loop.time() - self.last
        if idle >= self.h.keepalive and self.ending is None and not self.lock.locked():
            self._ping = self.loop.create_task(self.send(_KEEPALIVE, main=False))
            self._ping.add_done_callback(_retrieve)
            idle = 0.0
        self._tick = self.loop.call_later(max(0.05, self.h.keepalive - idle), self._idle)

    def _stopped(self, fut: asyncio.Future[str]) -> None:
        if not fut.cancelled():
            self._end(fut.result())

    def _end(self, reason: str) -> None:
        if self.ending is not None:
            return
        with self.tlock:  # the engine thread takes nothing more
            self.ending = reason
        self._cutoff = self.loop.call_later(_CUT_GRACE, self._cut)
        # a write of the stream's under way finishes, and the loop sees ``ending`` after it;
        # else stop waiting for the next event now
        if not self.main_writing and self.main is not None:
            self.main_cancelled = True
            self.main.cancel()

    def _cut(self) -> None:
        """The stream's end was not written ``_CUT_GRACE`` after it came (a write waits on a
        client that reads nothing): shut the connection down, so that write fails and the
        stream ends."""
        with self.tlock:
            if self.cut or self.sock.fileno() < 0:
                return
            self.cut = True
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        log.info("a direct stream's client read nothing for %gs after its end: connection shut down", _CUT_GRACE)

    def close(self) -> None:
        with self.tlock:  # after this no thread but the loop's touches the socket
            self.closed = True
        self._deadline.cancel()
        self._tick.cancel()
        if self._cutoff is not None:
            self._cutoff.cancel()
        assert self.h.stopped is not None
        self.h.stopped.remove_done_callback(self._stopped)


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class _SendThread:
    """The thread that sends the deltas engine threads took for their streams (``_Writer.kick``):
    one per process, started from an event loop's thread (so it keeps that thread's priority, not
    an engine thread's lower one)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Writer] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gpt-server-stream-sender", daemon=True)
        self._thread.start()

    def put(self, w: _Writer) -> None:
        self._queue.put(w)

    def _run(self) -> None:
        while True:
            w = self._queue.get()
            try:
                w.send_pending()
            except Exception:  # never stop the thread: that stream's loop writes raise it
                log.exception("a direct stream's send failed")


_sender: _SendThread | None = None
_sender_lock = threading.Lock()


def _send_thread() -> _SendThread:
    global _sender
    if _sender is None:
        with _sender_lock:
            if _sender is None:
                _sender = _SendThread()
    return _sender


async def write_stream(
    h: Handoff, events: AsyncIterator[Event], deltas: DeltaWriter | None = None, *, first: bool = False
) -> list[Event]:
    """Write the stream of ``events`` (the head went out through the gateway, and the first
    event unless ``first``) to the handed-off client socket; what the worker then answers the
    gateway (with ``first``, an empty delta ``held`` since the first text was written, so the
    gateway can time it; the usage; then an ``EndEvent``). ``deltas``: the generation's hook for
    deltas written on the engine's thread (``protocol.deltas``), set for as long as this writes
    the stream."""
    assert h.shape is not None
    w = _Writer(h, asyncio.current_task())
    shape = h.shape
    tail: list[bytes] = []
    usage: UsageEvent | None = None
    error = False
    if deltas is not None:
        _send_thread()  # started here, on the loop's thread (see _SendThread)
        deltas.write, deltas.kick = w.write_delta, w.kick
    try:
        try:
            async for ev in events:
                if isinstance(ev, ErrorEvent):
                    body = {"error": {"message": ev.message, "type": ev.type, "param": ev.param, "code": ev.code}}
                    tail.append(_sse(error_from_body(ev.status, body).body()))  # as the gateway renders it
                    error = True
                    break
                if isinstance(ev, UsageEvent):
                    usage = ev
                out = [_sse(c) for c in shape.chunks(ev)]
                if out:
                    if w.first is None and isinstance(ev, DeltaEvent):
                        w.first = time.perf_counter()
                    await w.send(b"".join(out))
                if w.ending is not None:
                    break
        except asyncio.CancelledError:
            if not w.main_cancelled or w.main is None or w.main.uncancel() > 0:
                raise
        if w.ending is not None:
            error = True
            if w.ending == "timeout":
                exc: Any = TimeoutError_(f"the request did not finish within {h.limit:g} seconds")
            else:
                exc = shutdown_error()
            tail.append(_sse(exc.body()))
        with w.tlock:  # the end goes last: nothing more from the engine thread
            w.closed = True
        await w.send(b"".join([*tail, _DONE]), last=True)
    except OSError:
        if not w.cut:
            raise
        error = True  # shut down: the client stopped reading (``_Writer._cut``)
    finally:
        if deltas is not None:
            deltas.write = deltas.kick = None
        w.close()
    answer: list[Event] = []
    if first and w.first is not None:
        answer.append(DeltaEvent(index=0, text="", held=time.perf_counter() - w.first))
    if usage is not None:
        answer.append(usage)
    answer.append(EndEvent(error=error))
    return answer
