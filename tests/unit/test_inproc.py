"""The in-process worker bridge (gpt_server.transport.inproc) against small real Starlette apps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gpt_server.transport.inproc import InProcessTransport
from gpt_server.web.responses import ClosingStreamingResponse


def _app(state: dict) -> Starlette:
    async def echo(request: Request) -> Response:
        body = await request.json()
        return JSONResponse({"got": body, "secret": request.headers.get("x-secret")})

    async def stream(request: Request) -> Response:
        n = (await request.json())["n"]

        async def gen() -> AsyncIterator[bytes]:
            try:
                for i in range(n):
                    yield f"{i}\n".encode()
                    await asyncio.sleep(state.get("pause", 0))
            finally:
                state["closed"] = True

        return ClosingStreamingResponse(gen(), on_close=lambda: state.__setitem__("on_close", True))

    async def slow_start(request: Request) -> Response:
        await state["gate"].wait()  # the caller hangs up while this waits
        state["answered"] = True

        async def gen() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x\n"
                    state["sent"] = state.get("sent", 0) + 1
                    await asyncio.sleep(0.01)
            finally:
                state["closed"] = True

        return StreamingResponse(gen())

    async def boom(request: Request) -> Response:
        raise RuntimeError("broken handler")

    async def fail_mid_stream(request: Request) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            for i in range(200):  # more chunks than the bridge buffers: the sender waits
                yield f"{i}\n".encode()
            raise RuntimeError("engine died")

        return StreamingResponse(gen())

    async def stall(request: Request) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            yield b"first\n"
            await asyncio.sleep(30)
            yield b"never\n"

        return StreamingResponse(gen())

    return Starlette(routes=[
        Route("/echo", echo, methods=["POST"]),
        Route("/stream", stream, methods=["POST"]),
        Route("/slow", slow_start, methods=["POST"]),
        Route("/boom", boom, methods=["POST"]),
        Route("/fail", fail_mid_stream, methods=["POST"]),
        Route("/stall", stall, methods=["POST"]),
    ])


inproc = InProcessTransport()  # this module's process-wide transport, as the launcher builds one


@pytest.fixture
def state() -> dict:
    s: dict = {}
    inproc.register("inproc://t", _app(s))
    yield s
    inproc.unregister("inproc://t")


def test_json_round_trip(state: dict) -> None:
    async def main() -> None:
        r = await inproc.post("inproc://t", "/echo", b'{"a": [1, 2]}', {"X-Secret": "s3"})
        assert r.status == 200 and r.headers["content-type"] == "application/json"
        assert await r.read() == b'{"got":{"a":[1,2]},"secret":"s3"}'
        r.close()

    asyncio.run(main())


def test_stream_in_order_and_coalesced(state: dict) -> None:
    async def main() -> None:
        r = await inproc.post("inproc://t", "/stream", b'{"n": 200}')
        reads = [c async for c in r.content.iter_any()]
        assert b"".join(reads) == b"".join(f"{i}\n".encode() for i in range(200))
        assert len(reads) < 200  # what was ready came as one read
        r.close()
        await asyncio.sleep(0)
        assert state["closed"] and state["on_close"]

    asyncio.run(main())


def test_close_mid_stream_cancels_the_app(state: dict) -> None:
    state["pause"] = 2.0  # only an immediate cancel ends it within the wait below

    async def main() -> None:
        r = await inproc.post("inproc://t", "/stream", b'{"n": 10000}')
        it = r.content.iter_any()
        assert (await it.__anext__()).startswith(b"0\n")
        r.close()
        for _ in range(50):
            if r.task.done():
                break
            await asyncio.sleep(0.01)
        assert r.task.done() and state["closed"] and state["on_close"]

    asyncio.run(main())


def test_caller_gone_before_the_answer(state: dict) -> None:
    """The handler is not cancelled mid-way; it is stopped at its first send."""
    state["gate"] = asyncio.Event()

    async def main() -> None:
        call = asyncio.create_task(inproc.post("inproc://t", "/slow", b"{}"))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        state["gate"].set()
        await asyncio.sleep(0.2)
        assert state["answered"] and state["closed"]
        assert state.get("sent", 0) <= 1

    asyncio.run(main())


def test_failures_look_like_connection_errors(state: dict) -> None:
    async def main() -> None:
        with pytest.raises(aiohttp.ClientConnectionError):
            await inproc.post("inproc://nobody", "/echo", b"{}")
        r = await inproc.post("inproc://t", "/boom", b"{}")  # Starlette answers a 500 first
        assert r.status == 500
        r.close()

    asyncio.run(main())


def test_failure_after_a_full_buffer_reaches_the_reader(state: dict) -> None:
    """The error comes after every chunk, even when the sender had to wait for room."""

    async def main() -> None:
        r = await inproc.post("inproc://t", "/fail", b"{}")
        await asyncio.sleep(0.1)  # let the app fill the buffer and wait
        got = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(5):
                async for chunk in r.content.iter_any():
                    got += chunk
        assert got == b"".join(f"{i}\n".encode() for i in range(200))
        r.close()

    asyncio.run(main())


def test_read_timeout_and_close_end_a_waiting_reader(state: dict) -> None:
    async def main() -> None:
        r = await inproc.post("inproc://t", "/stall", b"{}", read_timeout=0.2)
        it = r.content.iter_any()
        assert await it.__anext__() == b"first\n"
        with pytest.raises(aiohttp.ServerTimeoutError):
            await it.__anext__()
        r.close()

        r = await inproc.post("inproc://t", "/stall", b"{}")
        reader = asyncio.create_task(r.read())
        await asyncio.sleep(0.05)
        r.close()  # the caller gives up: a reader already waiting ends too
        async with asyncio.timeout(2):
            assert await reader == b"first\n"

    asyncio.run(main())


def test_address_scheme_checked() -> None:
    with pytest.raises(ValueError):
        inproc.register("http://127.0.0.1:1", _app({}))


def test_remote_gateways_skip_other_processes_in_process_workers() -> None:
    """A gateway that mirrors a controller over HTTP cannot call an in-process worker of
    the `serve` process that registered it: it must not list or dispatch to it (nor report
    it failed for everyone)."""
    import httpx

    from gpt_server.controller.client import RemoteController
    from gpt_server.errors import GatewayError

    def worker(model: str, address: str) -> dict:
        return {"worker_id": f"{model}-0", "address": address, "model_name": model, "model_kind": "auto",
                "capabilities": ["chat"], "capacity": 4, "heartbeat_interval": 1.0, "queue_length": 0, "healthy": True}

    listed = [worker("elsewhere", "inproc://elsewhere-0"), worker("remote", "http://10.0.0.5:9000")]
    reports: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/controller/workers":
            return httpx.Response(200, json=listed)
        reports.append(request.url.path)
        return httpx.Response(200, json={})

    async def main() -> None:
        local = InProcessTransport()
        rc = RemoteController("http://ctrl:1", local=local)
        await rc.client.aclose()
        rc.client = httpx.AsyncClient(base_url="http://ctrl:1", transport=httpx.MockTransport(handler))
        try:
            assert [m.id for m in await rc.models()] == ["remote"]
            assert (await rc.dispatch("remote", [])).address == "http://10.0.0.5:9000"
            with pytest.raises(GatewayError) as e:
                await rc.dispatch("elsewhere", [])
            assert e.value.status == 404
            local.register("inproc://elsewhere-0", _app({}))  # now it is this process's own
            try:
                await rc._reload()
                assert (await rc.dispatch("elsewhere", [])).address == "inproc://elsewhere-0"
            finally:
                local.unregister("inproc://elsewhere-0")
        finally:
            await rc.aclose()
        assert reports == []

    asyncio.run(main())
