"""The invoke socket (``transport.lane``): real Unix sockets on uvloop, a handler of the test's own.

The served path (a worker process answering the gateway's embeddings over its socket) is
proven in ``tests/integration/test_embeddings.py``; here the transport's edges: frames of any
size, one pooled connection for calls in turn, the secret, the body limit, a hang-up that
cancels the call, a socket that cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import orjson
import pytest
import uvloop

from gpt_server.errors import PayloadTooLargeError
from gpt_server.protocol.worker import secret_matches
from gpt_server.transport.lane import (
    LaneClient,
    LaneReply,
    LaneServer,
    LaneStream,
    LaneUnavailable,
    Streamed,
)
from tests.helpers import wait_to_be_cancelled

SECRET = "s3cret-for-the-lane"


def _run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return uvloop.run(main())


async def _server(handler: Callable[[bytes, LaneReply | None], Awaitable[tuple[int, bytes]]], max_frame: int = 8 << 20) -> LaneServer:
    server = LaneServer(
        handler, secret_ok=lambda given: secret_matches(given, SECRET), max_frame=max_frame,
        too_large=lambda n: PayloadTooLargeError(f"over {n} bytes").to_json(),
    )
    await server.start()
    return server


@contextlib.asynccontextmanager
async def _lane(
    handler: Callable[[bytes, LaneReply | None], Awaitable[tuple[int, bytes]]], max_frame: int = 8 << 20
) -> AsyncIterator[tuple[LaneServer, LaneClient]]:
    """A served socket and a client with the secret, both closed after."""
    server = await _server(handler, max_frame)
    client = LaneClient(SECRET)
    try:
        yield server, client
    finally:
        client.close()
        server.close()


async def _echo(body: bytes, reply: LaneReply | None = None) -> tuple[int, bytes]:
    data = orjson.loads(body)
    if data.get("fail"):
        return 429, orjson.dumps({"error": {"message": "busy", "type": "rate_limit_error", "param": None, "code": None}})
    return 200, orjson.dumps({"got": data, "pid": os.getpid()})


def test_calls_in_turn_share_one_connection_and_answers_of_any_size_arrive_whole() -> None:
    async def main() -> None:
        async with _lane(_echo) as (server, client):
            assert oct(os.stat(server.path).st_mode & 0o777) == "0o600"
            assert oct(os.stat(os.path.dirname(server.path)).st_mode & 0o777) == "0o700"
            for size in (0, 10, 70_000, 3_000_000):
                status, out = await client.call(server.path, orjson.dumps({"x": "y" * size}))
                assert status == 200 and orjson.loads(out)["got"] == {"x": "y" * size}
            assert len(server.conns) == 1
            status, out = await client.call(server.path, orjson.dumps({"fail": True}))
            assert status == 429 and orjson.loads(out)["error"]["message"] == "busy"
            # calls at once take a connection each, then go back to the pool
            outs = await asyncio.gather(*(client.call(server.path, orjson.dumps({"i": i})) for i in range(5)))
            assert [orjson.loads(o)["got"]["i"] for _, o in outs] == list(range(5))
            assert len(server.conns) == 5
        assert not os.path.exists(server.path)

    _run(main)


def test_a_connection_without_the_secret_is_closed_unanswered() -> None:
    async def main() -> None:
        calls: list[bytes] = []

        async def handler(body: bytes, reply: LaneReply | None = None) -> tuple[int, bytes]:
            calls.append(body)
            return 200, b"{}"

        server = await _server(handler)
        try:
            for wrong in ("", "not-the-secret"):
                client = LaneClient(wrong)
                with pytest.raises(ConnectionError):
                    await asyncio.wait_for(client.call(server.path, b'{"a": 1}'), 5)
                client.close()
            assert calls == []
            ok = LaneClient(SECRET)
            assert await ok.call(server.path, b'{"a": 1}') == (200, b"{}")
            ok.close()
        finally:
            server.close()

    _run(main)


def test_a_body_over_the_limit_is_answered_413_and_skipped() -> None:
    async def main() -> None:
        async with _lane(_echo, max_frame=1000) as (server, client):
            status, out = await client.call(server.path, b'{"x": "' + b"y" * 300_000 + b'"}')
            err = orjson.loads(out)["error"]
            assert status == 413 and "over 1000 bytes" in err["message"]
            status, _ = await client.call(server.path, b'{"x": 1}')  # the connection stays in step
            assert status == 200 and len(server.conns) == 1

    _run(main)


def test_a_call_abandoned_by_the_gateway_is_cancelled_in_the_worker() -> None:
    async def main() -> None:
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def slow(body: bytes, reply: LaneReply | None = None) -> tuple[int, bytes]:
            await wait_to_be_cancelled(started, cancelled)
            return 200, b"{}"

        async with _lane(slow) as (server, client):
            call = asyncio.ensure_future(client.call(server.path, b"{}"))
            await asyncio.wait_for(started.wait(), 5)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await asyncio.wait_for(cancelled.wait(), 5)
            assert not client._idle.get(server.path)  # the cut connection is not pooled

    _run(main)


def test_a_worker_gone_mid_call_is_a_lost_connection_and_a_missing_socket_is_unavailable() -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def hang(body: bytes, reply: LaneReply | None = None) -> tuple[int, bytes]:
            started.set()
            await asyncio.sleep(30)
            return 200, b"{}"

        server = await _server(hang)
        path = server.path
        client = LaneClient(SECRET)
        try:
            call = asyncio.ensure_future(client.call(path, b"{}"))
            await asyncio.wait_for(started.wait(), 5)
            server.close()  # the worker exits: its connections are cut, its socket removed
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(call, 5)
            with pytest.raises(LaneUnavailable):
                await client.call(path, b"{}")
            assert not client.usable(path)  # over HTTP for a while, not tried on every call
            assert client.usable("/elsewhere/i.sock")
        finally:
            client.close()

    _run(main)


def test_a_draining_worker_takes_no_new_connection_but_answers_on_open_ones() -> None:
    async def main() -> None:
        async with _lane(_echo) as (server, client):
            assert (await client.call(server.path, b"{}"))[0] == 200
            server.stop_accepting()
            assert (await client.call(server.path, b"{}"))[0] == 200  # the pooled connection
            other = LaneClient(SECRET)
            with pytest.raises(LaneUnavailable):
                await other.call(server.path, b"{}")
            other.close()

    _run(main)


def test_an_answer_sent_from_another_thread_arrives_once_whole_and_the_connection_stays_in_step() -> None:
    """``LaneReply``: an engine's thread writes the answer itself; what a full socket leaves the
    loop writes after it; a reply closed (its call over) sends nothing more, nor one not claimed."""
    async def main() -> None:
        late: list[LaneReply] = []

        async def threaded(body: bytes, reply: LaneReply | None = None) -> tuple[int, bytes]:
            assert reply is not None
            assert not reply.send(b"unclaimed")  # no descriptor of its own yet: the loop answers
            assert reply.claim()
            size = int(body)
            sent = await asyncio.to_thread(reply.send, b'"' + b"z" * size + b'"')
            assert sent and reply.sent and not reply.send(b"again")
            late.append(reply)
            return 200, b"ignored: already sent"

        async with _lane(threaded) as (server, client):
            for size in (10, 5_000_000, 20):  # the middle one is more than the socket takes at once
                status, out = await client.call(server.path, str(size).encode())
                assert status == 200 and out == b'"' + b"z" * size + b'"'
            assert len(server.conns) == 1
            assert not late[0].send(b"after its call") and not late[0].claim()  # closed with its call

    _run(main)


# ---- GENERATE calls: a streamed answer --------------------------------------------------


async def _streamed_lane(
    streams: Callable[[bytes], Awaitable[tuple[int, bytes] | Streamed]]
) -> tuple[LaneServer, LaneClient]:
    server = LaneServer(
        _echo, secret_ok=lambda given: secret_matches(given, SECRET), max_frame=8 << 20,
        too_large=lambda n: b"{}", streams=streams, unknown_call=lambda kind: b'{"kind": %d}' % kind,
    )
    await server.start()
    return server, LaneClient(SECRET)


def _answer(
    rest: AsyncGenerator[bytes, None], closed: list[str] | None = None, name: str = "", flags: int = 0, first: bytes = b""
) -> Streamed:
    """A stream answer whose end is noted in ``closed`` (as ``name``)."""
    async def on_close() -> None:
        if closed is not None:
            closed.append(name)

    return Streamed(flags=flags, first=first, rest=rest, on_close=on_close)


def test_a_stream_arrives_in_order_and_its_connection_serves_the_next_call() -> None:
    """Head flags and first bytes, every chunk in order (empty ones skipped), the end; an error
    head is the whole answer; both leave the one connection in step for the next call."""
    closed: list[str] = []

    async def streams(body: bytes) -> tuple[int, bytes] | Streamed:
        if body == b"refuse":
            return 429, b'{"error": {"message": "busy"}}'
        n = int(body)

        async def rest() -> AsyncGenerator[bytes, None]:
            for i in range(n):
                yield b"" if i % 3 == 0 else b"%d," % i

        return _answer(rest(), closed, body.decode(), flags=n % 2, first=b"first,")

    async def main() -> None:
        server, client = await _streamed_lane(streams)
        try:
            for n in (0, 5, 2000):
                stream = await client.generate(server.path, str(n).encode())
                assert isinstance(stream, LaneStream) and stream.flags == n % 2
                assert await stream.read() == b"first," + b"".join(b"%d," % i for i in range(n) if i % 3)
                stream.close()  # after its end: the pooled connection stays open
            assert await client.generate(server.path, b"refuse") == (429, b'{"error": {"message": "busy"}}')
            assert await client.call(server.path, b"{}") == (200, orjson.dumps({"got": {}, "pid": os.getpid()}))
            assert len(server.conns) == 1 and closed == ["0", "5", "2000"]
        finally:
            client.close()
            server.close()

    _run(main)


def test_a_stream_closed_by_the_gateway_stops_in_the_worker_and_one_that_fails_is_cut() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()
    closed: list[str] = []

    async def streams(body: bytes) -> tuple[int, bytes] | Streamed:
        async def rest() -> AsyncGenerator[bytes, None]:
            yield b"one"
            if body == b"fail":
                raise RuntimeError("the engine broke")
            await wait_to_be_cancelled(started, cancelled)
            yield b"never"

        return _answer(rest(), closed, body.decode())

    async def main() -> None:
        server, client = await _streamed_lane(streams)
        try:
            stream = await client.generate(server.path, b"hang")
            assert isinstance(stream, LaneStream)
            chunks = aiter(stream.iter_any())
            assert await anext(chunks) == b"one"
            await asyncio.wait_for(started.wait(), 5)
            stream.close()  # the client hung up
            await asyncio.wait_for(cancelled.wait(), 5)
            assert not client._idle.get(server.path)  # a cut connection is not pooled
            stream = await client.generate(server.path, b"fail")
            assert isinstance(stream, LaneStream)
            with pytest.raises(ConnectionResetError):  # not a short stream that looks whole
                await asyncio.wait_for(stream.read(), 5)
            for _ in range(50):
                if len(closed) == 2:
                    break
                await asyncio.sleep(0.02)
            assert sorted(closed) == ["fail", "hang"]
        finally:
            client.close()
            server.close()

    _run(main)


def test_a_stream_the_gateway_does_not_read_holds_the_workers_writes() -> None:
    """Flow control: with the gateway not reading, the worker stops at a bounded amount sent;
    read afterwards, every byte arrives."""
    produced: list[int] = []
    chunk = b"x" * 16_384

    async def streams(body: bytes) -> tuple[int, bytes] | Streamed:
        async def rest() -> AsyncGenerator[bytes, None]:
            for i in range(1024):  # 16 MiB
                produced.append(i)
                yield chunk

        return _answer(rest())

    async def main() -> None:
        server, client = await _streamed_lane(streams)
        try:
            stream = await client.generate(server.path, b"big")
            assert isinstance(stream, LaneStream)
            await asyncio.sleep(0.5)
            held = len(produced)
            assert held < 512, held  # not all 16 MiB went into buffers
            assert await stream.read() == chunk * 1024
        finally:
            client.close()
            server.close()

    _run(main)


def test_a_call_of_an_unknown_kind_is_answered_400_in_step() -> None:
    async def main() -> None:
        server, client = await _streamed_lane(lambda body: asyncio.sleep(0, (500, b"")))
        try:
            conn = await client._connect(server.path)
            assert await conn.call(b"{}", kind=7) == (400, b'{"kind": 7}')
            assert await conn.call(b"{}") == (200, orjson.dumps({"got": {}, "pid": os.getpid()}))
            conn.close()
        finally:
            client.close()
            server.close()

    _run(main)
