"""The hand-off of a client connection to a worker (``transport.direct``), over real sockets.

A socketpair stands for the client's connection: the gateway's side hands one end to the
worker's hand-off socket (a real SOCK_SEQPACKET listener, SCM_RIGHTS), the worker writes
the stream to it, and the test reads what a client would read from the other end.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import stat
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from gpt_server.backends.textgen.sequences import (
    SeqEvent,
    hold_events,
    release_events,
    stream_sequences,
)
from gpt_server.chat.chunks import ChunkShape
from gpt_server.protocol.deltas import DELTA_WRITER, DeltaWriter
from gpt_server.protocol.worker import (
    DeltaEvent,
    EndEvent,
    ErrorEvent,
    Event,
    FinishEvent,
    UsageEvent,
)
from gpt_server.transport.direct import (
    HandoffClient,
    HandoffServer,
    client_transport,
    is_loopback_address,
    stream_token,
    write_stream,
)

TOKEN = "0123456789abcdef" * 2  # as secrets.token_hex(16) makes them


def _sync(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Each test runs its own event loop (the hand-off server reads on it)."""

    def test() -> None:
        asyncio.run(fn())

    test.__doc__ = fn.__doc__
    return test


def _shape(**kw: Any) -> ChunkShape:
    return ChunkShape(**{"kind": "chat", "id": "chatcmpl-1", "created": 1, "model": "m", "system_fingerprint": "fp_1", **kw})


def _read_chunked(sock: socket.socket, timeout: float = 5.0, slow: range = range(0)) -> list[bytes]:
    """HTTP/1.1 chunks from ``sock`` up to the body's last chunk (empty), which must come in the
    same read as [DONE], and nothing after it. ``slow``: the reads in this range take 256 bytes
    each, 5 ms apart (the sender's buffer fills)."""
    sock.settimeout(timeout)
    buf, chunks = b"", []
    for i in itertools.count():
        if i in slow:
            time.sleep(0.005)
        data = sock.recv(256 if i in slow else 65536)
        assert data, "connection closed before the last chunk"
        buf += data
        while b"\r\n" in buf:
            size_line, rest = buf.split(b"\r\n", 1)
            size = int(size_line, 16)
            if len(rest) < size + 2:
                break
            assert rest[size : size + 2] == b"\r\n"
            buf = rest[size + 2 :]
            if size == 0:
                assert chunks[-1].endswith(b"data: [DONE]\n\n") and buf == b""
                return chunks
            chunks.append(rest[:size])


def _events(sse: bytes) -> list[Any]:
    out = []
    for block in sse.split(b"\n\n"):
        if block.startswith(b"data: "):
            body = block[6:]
            out.append("[DONE]" if body == b"[DONE]" else orjson.loads(body))
        elif block.startswith(b":"):
            out.append("keep-alive")
    return out


async def _gen(events: list[Event], wait: float = 0.0, then_block: bool = False) -> AsyncIterator[Event]:
    if wait:
        await asyncio.sleep(wait)
    for ev in events:
        yield ev
    if then_block:
        await asyncio.Event().wait()


class _Pair:
    def __init__(self) -> None:
        self.server = HandoffServer()
        self.path = self.server.start()
        self.client = HandoffClient()
        self.mine, self.theirs = socket.socketpair()  # theirs: the client's connection as the gateway holds it
        self.theirs.setblocking(False)

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.mine.close()
        self.theirs.close()


async def _stream(
    pair: _Pair, events: AsyncIterator[Event], shape: ChunkShape, deltas: DeltaWriter | None = None, **kw: Any
) -> tuple[list[Event], list[Any]]:
    opts = {"timeout": 10.0, "limit": 10.0, "keepalive": 15.0, **kw}
    assert pair.client.hand(pair.path, TOKEN, pair.theirs.fileno(), shape, **opts)
    h = await pair.server.take(TOKEN, timeout=2)
    assert h.sock is not None
    reader = asyncio.ensure_future(asyncio.to_thread(_read_chunked, pair.mine, 20.0))  # as a client reads, meanwhile
    try:
        answer = await write_stream(h, events, deltas)
    finally:
        pair.server.finished(h)
    sse = b"".join(await reader)
    return answer, _events(sse)


@_sync
async def test_a_handed_stream_is_the_shapes_chunks_then_done() -> None:
    pair = _Pair()
    try:
        evs: list[Event] = [
            DeltaEvent(index=0, text="Hel"), DeltaEvent(index=0, text="lo"), FinishEvent(index=0, finish_reason="stop"),
            UsageEvent(prompt_tokens=5, completion_tokens=2),
        ]
        answer, got = await _stream(pair, _gen(evs), _shape(include_usage=True))
        want_shape = _shape(include_usage=True)
        want = [c for ev in evs for c in want_shape.chunks(ev)] + ["[DONE]"]  # the head went out through the gateway
        assert got == want
        assert got[0]["choices"][0]["delta"] == {"content": "Hel"}
        assert got[-2]["usage"]["total_tokens"] == 7
        assert isinstance(answer[0], UsageEvent) and isinstance(answer[-1], EndEvent) and not answer[-1].error
    finally:
        pair.close()


@_sync
async def test_completion_offsets_go_on_from_where_the_gateway_left_them() -> None:
    pair = _Pair()
    try:
        shape = _shape(kind="completion", logprobs=True)
        from gpt_server.protocol.worker import TokenLogprob

        shape.chunks(DeltaEvent(index=0, text="abc", logprobs=[TokenLogprob(token="abc", logprob=-1.0)]))  # the gateway's first event
        ev = DeltaEvent(index=0, text="de", logprobs=[TokenLogprob(token="de", logprob=-0.5)])
        _, got = await _stream(pair, _gen([ev]), shape)
        assert got[0]["choices"][0]["logprobs"]["text_offset"] == [3]
    finally:
        pair.close()


@_sync
async def test_a_worker_error_is_the_last_event_before_done() -> None:
    pair = _Pair()
    try:
        evs: list[Event] = [
            DeltaEvent(index=0, text="a"),
            ErrorEvent(status=500, type="server_error", message="generation failed: boom", code="internal_error"),
        ]
        answer, got = await _stream(pair, _gen(evs), _shape())
        assert got[-1] == "[DONE]"
        assert got[-2] == {"error": {"message": "generation failed: boom", "type": "server_error", "param": None, "code": "internal_error"}}
        assert isinstance(answer[-1], EndEvent) and answer[-1].error
    finally:
        pair.close()


@_sync
async def test_the_deadline_ends_the_stream_with_the_timeout_error() -> None:
    pair = _Pair()
    try:
        answer, got = await _stream(pair, _gen([DeltaEvent(index=0, text="a")], then_block=True), _shape(), timeout=0.4, limit=7.0)
        assert got[-1] == "[DONE]"
        err = got[-2]["error"]
        assert err["code"] == "timeout" and err["type"] == "timeout_error" and "within 7 seconds" in err["message"]
        assert isinstance(answer[-1], EndEvent) and answer[-1].error
    finally:
        pair.close()


@_sync
async def test_a_stop_ends_the_stream_with_the_shutdown_error() -> None:
    pair = _Pair()
    try:
        async def stop_soon() -> None:
            await asyncio.sleep(0.3)
            assert pair.client.stop(pair.path, TOKEN)

        stopper = asyncio.create_task(stop_soon())
        answer, got = await _stream(pair, _gen([DeltaEvent(index=0, text="a")], then_block=True), _shape())
        await stopper
        assert got[-1] == "[DONE]" and got[-2]["error"]["code"] == "server_shutdown"
        assert got[-3]["choices"][0]["delta"] == {"content": "a"}
    finally:
        pair.close()


@_sync
async def test_an_idle_stream_gets_keepalive_comments() -> None:
    pair = _Pair()
    try:
        evs: list[Event] = [DeltaEvent(index=0, text="late"), FinishEvent(index=0, finish_reason="stop")]
        _, got = await _stream(pair, _gen(evs, wait=1.3), _shape(), keepalive=0.5)
        assert got.count("keep-alive") >= 2, got
        assert got[-1] == "[DONE]" and got[-2]["choices"][0]["finish_reason"] == "stop"
    finally:
        pair.close()


def test_only_tokens_of_the_gateways_shape_are_taken() -> None:
    assert stream_token(TOKEN) == TOKEN and stream_token("f" * 64)
    for bad in (None, "", "tok1", "A" * 32, "g" * 32, "a" * 31, "a" * 65, "a" * 31 + "/", "0" * 31 + "\n"):
        assert stream_token(bad) is None, bad


@_sync
async def test_a_hand_off_with_a_malformed_token_is_dropped_and_its_descriptor_closed() -> None:
    pair = _Pair()
    try:
        assert pair.client.reachable(pair.path)
        await asyncio.sleep(0.1)  # connected and accepted: the descriptors that stay
        before = len(os.listdir("/proc/self/fd"))
        assert pair.client._send(pair.path, {"op": "stream", "token": "../x", "shape": {}, "timeout": 1}, pair.theirs.fileno())
        await asyncio.sleep(0.2)  # the server reads it on this loop
        assert len(os.listdir("/proc/self/fd")) == before  # the duplicate it received is closed
        assert not pair.server._arrived and not pair.server._waiting
    finally:
        pair.close()


@_sync
async def test_a_declined_hand_off_and_one_that_never_comes_are_relays() -> None:
    pair = _Pair()
    try:
        pair.client.decline(pair.path, "d" * 32)
        h = await pair.server.take("d" * 32, timeout=2)
        assert h.sock is None
        h = await pair.server.take("e" * 32, timeout=0.2)
        assert h.sock is None
    finally:
        pair.close()


@_sync
async def test_a_hand_off_may_arrive_before_the_worker_waits_for_it() -> None:
    pair = _Pair()
    try:
        assert pair.client.hand(pair.path, "a" * 32, pair.theirs.fileno(), _shape(), timeout=5, limit=5, keepalive=15)
        await asyncio.sleep(0.2)  # the worker's loop reads it into ``arrived``
        h = await pair.server.take("a" * 32, timeout=0.01)
        assert h.sock is not None
        pair.server.finished(h)
    finally:
        pair.close()


@_sync
async def test_the_socket_is_private_and_unreachable_once_closed() -> None:
    pair = _Pair()
    path = pair.path
    mode = stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)
    assert mode == 0o700
    assert pair.client.reachable(path)
    pair.close()
    assert not os.path.exists(path)
    assert not HandoffClient().reachable(path)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
@_sync
async def test_another_users_process_is_refused() -> None:
    """The directory is 0700 and the listener checks the peer's uid too (SO_PEERCRED)."""
    pair = _Pair()
    try:
        os.chmod(os.path.dirname(pair.path), 0o755)  # so only the uid check stands in the way
        os.chmod(pair.path, 0o777)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: another user, tries to hand a descriptor over
            try:
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.connect(pair.path)
                s.settimeout(2)
                got = s.recv(10)  # the worker closes the connection: b""
                os.write(w, b"closed" if got == b"" else b"open")
            except OSError as exc:
                os.write(w, f"error {exc}".encode())
            os._exit(0)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, os.read, r, 100)
        await loop.run_in_executor(None, os.waitpid, pid, 0)
        assert result == b"closed", result
    finally:
        pair.close()


def test_loopback_addresses() -> None:
    assert is_loopback_address("http://127.0.0.1:8000")
    assert is_loopback_address("https://localhost:9")
    assert is_loopback_address("http://[::1]:80")
    assert not is_loopback_address("http://10.0.0.5:8000")
    assert not is_loopback_address("http://worker-1:8000")
    assert not is_loopback_address("inproc://smollm2/0")


class _Transport:
    def __init__(self, closing: bool = False, ssl: Any = None) -> None:
        self.closing, self.ssl = closing, ssl

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str) -> Any:
        return self.ssl if name == "sslcontext" else None


def test_only_plain_http11_connections_are_handed() -> None:
    t = _Transport()
    ok = {"http_version": "1.1", "scheme": "http", "extensions": {"gpt_server.transport": t}}
    assert client_transport(ok) is t
    assert client_transport({**ok, "http_version": "1.0"}) is None
    assert client_transport({**ok, "http_version": "2"}) is None
    assert client_transport({**ok, "scheme": "https"}) is None
    assert client_transport({**ok, "extensions": {"gpt_server.transport": _Transport(ssl=object())}}) is None
    assert client_transport({**ok, "extensions": {"gpt_server.transport": _Transport(closing=True)}}) is None
    assert client_transport({"http_version": "1.1", "scheme": "http"}) is None  # another server's scope


def test_the_connection_tap_skips_one_last_chunk_when_told() -> None:
    from gpt_server.web.serve import ConnectionTap

    class _T:
        def __init__(self) -> None:
            self.out: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.out.append(data)

        def get_write_buffer_size(self) -> int:
            return 7

    t = _T()
    tap = ConnectionTap(t)
    tap.write(b"0\r\n\r\n")  # not told: written
    tap.write(b"5\r\nhello\r\n")
    tap.ended_elsewhere()
    tap.write(b"0\r\n\r\n")  # the worker wrote it: skipped, once
    tap.write(b"0\r\n\r\n")
    assert t.out == [b"0\r\n\r\n", b"5\r\nhello\r\n", b"0\r\n\r\n"]
    assert tap.get_write_buffer_size() == 7  # everything else is the transport's
    tap.hold_head()  # a head and the first chunk: one write
    tap.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert len(t.out) == 3
    tap.write(b"3\r\nabc\r\n")
    tap.write(b"1\r\nd\r\n")  # then each write as it comes
    assert t.out[3:] == [b"HTTP/1.1 200 OK\r\n\r\n3\r\nabc\r\n", b"1\r\nd\r\n"]
    tap.hold_head()  # a body that ends at once: the head goes with its end
    tap.write(b"HTTP/1.1 200 OK\r\n\r\n")
    tap.write(b"0\r\n\r\n")
    assert t.out[5:] == [b"HTTP/1.1 200 OK\r\n\r\n0\r\n\r\n"]


@_sync
async def test_connections_to_workers_that_exited_are_closed_when_another_opens() -> None:
    """A worker that exits (or is killed) leaves the gateway's connection to it readable at EOF:
    the next new connection closes it, so dead workers do not hold descriptors."""
    first, second = HandoffServer(), HandoffServer()
    client = HandoffClient()
    try:
        a, b = first.start(), second.start()
        assert client.reachable(a)
        await asyncio.sleep(0.05)  # accepted
        first.close()  # the worker's end closes
        await asyncio.sleep(0.05)
        assert a in client._socks  # nothing has looked yet
        assert client.reachable(b)
        assert a not in client._socks and b in client._socks
        assert client.reachable(b)  # a live one stays
        assert b in client._socks
    finally:
        client.close()
        first.close()
        second.close()


# ---- deltas written on the engine's thread (protocol.deltas) ---------------------------------------


def _engine_stream(
    n: int, pace: float = 0.0, forever: bool = False, send_here: bool = False
) -> tuple[AsyncIterator[Event], dict[str, threading.Event]]:
    """A stream of ``n`` deltas ``<0>``, ``<1>`` … from a thread that acts as an engine: events
    held and released every few tokens, as a real engine's step does (``send_here``: it sends
    its deltas itself). Returns the events and the stream's cancelled flag (once it starts)."""
    flag: dict[str, threading.Event] = {}

    def make(sink: Any, cancelled: threading.Event) -> list[Any]:
        flag["c"] = cancelled
        return [types.SimpleNamespace(index=0, sink=sink)]

    def engine(sink: Any) -> None:
        hold_events(send_here)
        i = 0
        while (i < n or forever) and not flag["c"].is_set():
            sink(SeqEvent(index=0, text=f"<{i}>"))
            i += 1
            if i % 3 == 0:
                release_events()  # a step's end: the writers are kicked, the loop gets its events
                if pace:
                    time.sleep(pace)
        sink(SeqEvent(index=0, finish_reason="stop", completion_tokens=i))
        release_events()

    def submit(seqs: list[Any]) -> None:
        threading.Thread(target=engine, args=(seqs[0].sink,), daemon=True).start()

    events = stream_sequences(make, submit, lambda: None, prompt_tokens=1, unchanged=True)
    return events, flag


async def _first(events: AsyncIterator[Event], deltas: DeltaWriter) -> Event:
    """The first event, taken as the worker takes it: with the stream's ``DeltaWriter`` set."""
    reset = DELTA_WRITER.set(deltas)
    try:
        return await anext(events)
    finally:
        DELTA_WRITER.reset(reset)


def test_deltas_written_on_the_engine_thread_keep_their_order() -> None:
    """Deltas taken on the engine's thread, sent by the writer thread, partly left for the loop
    where the client reads slowly (a small send buffer), and the loop's own events (the first
    deltas, the finish) come out in the engine's order, each once."""
    asyncio.run(_deltas_in_order(send_here=False))


def test_deltas_the_engine_thread_sends_itself_keep_their_order() -> None:
    """The same where the engine's thread sends its deltas itself (an engine whose compute threads
    take every core, ``EngineThread.send_here``)."""
    asyncio.run(_deltas_in_order(send_here=True))


async def _deltas_in_order(send_here: bool) -> None:
    pair = _Pair()
    try:
        pair.theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        n = 1500
        deltas = DeltaWriter()
        events, _ = _engine_stream(n, pace=0.001, send_here=send_here)
        first = await _first(events, deltas)  # it goes out through the gateway, before the hand-off
        assert isinstance(first, DeltaEvent) and first.text == "<0>"
        shape = _shape(include_usage=True)
        assert pair.client.hand(pair.path, TOKEN, pair.theirs.fileno(), shape, timeout=20.0, limit=20.0, keepalive=15.0)
        h = await pair.server.take(TOKEN, timeout=2)
        reader = asyncio.ensure_future(asyncio.to_thread(_read_chunked, pair.mine, 20.0, range(30, 130)))
        try:
            answer = await write_stream(h, events, deltas)
        finally:
            pair.server.finished(h)
        got = _events(b"".join(await reader))
        texts = [c["choices"][0]["delta"].get("content") for c in got if isinstance(c, dict) and c.get("choices")]
        assert "".join(t for t in texts if t) == "".join(f"<{i}>" for i in range(1, n))
        assert got[-3]["choices"][0]["finish_reason"] == "stop" and got[-2]["usage"]["completion_tokens"] == n
        assert got[-1] == "[DONE]"
        assert isinstance(answer[-1], EndEvent) and not answer[-1].error
        # all but a few went the engine thread's way (the first, those around the hand-off, the finish)
        assert deltas.taken + deltas.posted == n + 1 and deltas.taken > n * 0.9, (deltas.taken, deltas.posted)
        assert deltas.write is None and deltas.kick is None  # nothing more once the stream is done
    finally:
        pair.close()


@_sync
async def test_the_deadline_ends_a_stream_the_engine_thread_writes() -> None:
    """The deadline's error comes after the last delta taken and nothing follows it: the
    engine's deltas after the end go nowhere."""
    pair = _Pair()
    try:
        deltas = DeltaWriter()
        events, flag = _engine_stream(0, pace=0.001, forever=True)
        await _first(events, deltas)
        answer, got = await _stream(pair, events, _shape(), timeout=0.5, limit=9.0, deltas=deltas)
        flag["c"].set()
        assert deltas.taken > 20
        assert got[-1] == "[DONE]" and got[-2]["error"]["code"] == "timeout"
        texts = [c["choices"][0]["delta"]["content"] for c in got[:-2]]
        assert len(texts) > 20 and texts == [f"<{i}>" for i in range(1, len(texts) + 1)]
        assert isinstance(answer[-1], EndEvent) and answer[-1].error
    finally:
        pair.close()


@_sync
async def test_a_client_that_reads_nothing_is_cut_off_after_the_deadline() -> None:
    """The client stops reading: once the send buffers are full every write waits on it. At the
    deadline the stream's end cannot be written either, so after ``_CUT_GRACE`` the connection
    is shut down, the stream ends and the client reads to the end of the connection."""
    from gpt_server.transport import direct

    pair = _Pair()
    grace, direct._CUT_GRACE = direct._CUT_GRACE, 0.3
    try:
        pair.theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = [DeltaEvent(index=0, text="x" * 65536) for _ in range(64)]  # far more than the buffers hold
        assert pair.client.hand(pair.path, TOKEN, pair.theirs.fileno(), _shape(), timeout=0.4, limit=9.0, keepalive=15.0)
        h = await pair.server.take(TOKEN, timeout=2)
        t0 = time.monotonic()
        try:
            answer = await asyncio.wait_for(write_stream(h, _gen(big, then_block=True)), 5.0)
        finally:
            pair.server.finished(h)
        assert 0.4 + 0.3 <= time.monotonic() - t0 < 3.0
        assert isinstance(answer[-1], EndEvent) and answer[-1].error
        pair.mine.settimeout(5.0)
        got = 0
        while data := pair.mine.recv(1 << 20):  # what was buffered, then the end of the connection
            got += len(data)
        assert 0 < got < 64 * 65536
    finally:
        direct._CUT_GRACE = grace
        pair.close()


@_sync
async def test_a_whole_answer_keeps_the_order_of_both_paths() -> None:
    """An answer sent whole (``protocol.deltas.Answer``): deltas kept on the engine thread and
    deltas that went through the event loop (after one choice's finish, while the loop was
    busy) come out in the engine's order, each choice as one event, then the finishes."""
    from gpt_server.protocol.deltas import Answer
    from gpt_server.worker.generation import Generation

    loop = asyncio.get_running_loop()
    k, n = 40, 400

    def make(sink: Any, cancelled: threading.Event) -> list[Any]:
        return [types.SimpleNamespace(index=0, sink=sink), types.SimpleNamespace(index=1, sink=sink)]

    def engine(sink: Any) -> None:
        hold_events()
        for i in range(n):
            if i < k:
                sink(SeqEvent(index=0, text=f"a{i},"))
            elif i == k:
                loop.call_soon_threadsafe(time.sleep, 0.05)  # the loop is busy when the finish comes
                sink(SeqEvent(index=0, finish_reason="stop", completion_tokens=k))
            sink(SeqEvent(index=1, text=f"b{i},"))
            release_events()
            time.sleep(0.0005)
        sink(SeqEvent(index=1, finish_reason="length", completion_tokens=n))
        release_events()

    def submit(seqs: list[Any]) -> None:
        threading.Thread(target=engine, args=(seqs[0].sink,), daemon=True).start()

    answer = Answer()
    events = stream_sequences(make, submit, lambda: None, prompt_tokens=3, unchanged=True)
    first = await _first(events, answer.writer)
    runtime = types.SimpleNamespace(release=lambda: None, tokens_total=0, last_error=None)
    answer.take()
    out = await Generation(runtime, events, first).whole(answer)  # type: ignore[arg-type]
    deltas = [ev for ev in out if isinstance(ev, DeltaEvent)]
    assert [d.index for d in deltas] == [0, 1]
    assert deltas[0].text == "".join(f"a{i}," for i in range(k))
    assert deltas[1].text == "".join(f"b{i}," for i in range(n))
    assert all(d.held is not None and d.held > 0 for d in deltas)
    assert [(ev.index, ev.finish_reason) for ev in out if isinstance(ev, FinishEvent)] == [(0, "stop"), (1, "length")]
    assert isinstance(out[-1], UsageEvent) and out[-1].completion_tokens == k + n
    w = answer.writer
    assert w.taken > n // 2 and w.posted > 10, (w.taken, w.posted)  # both paths carried deltas
    assert w.write is None  # nothing more once the answer is out
