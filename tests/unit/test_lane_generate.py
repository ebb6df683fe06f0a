"""A worker's chats over its invoke socket (``worker.app.lane_streams`` on ``transport.lane``):
real sockets and the worker's own runtime, in front of a scripted backend (the error paths; the
served path with a real model is ``tests/integration/test_direct_streams.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvloop

from gpt_server.protocol.worker import DeltaEvent, Event, GenerateRequest, UsageEvent
from gpt_server.transport.lane import LaneClient, LaneServer, LaneStream
from gpt_server.worker.app import lane_handler, lane_streams
from gpt_server.worker.runtime import WorkerRuntime

SECRET = "lane-generate-secret"


class ScriptedBackend:
    """``mode``: "ok" (three deltas, then usage), "raise" (fails before its first event, not in
    the generator), "hold" (one delta, then waits until cancelled)."""

    capabilities = frozenset({"chat"})
    capacity = 4
    context_length = 64

    def __init__(self) -> None:
        self.mode = "ok"
        self.closed_with_inflight: int | None = None
        self.runtime: WorkerRuntime | None = None
        self.held = asyncio.Event()

    def generate(self, req: GenerateRequest) -> AsyncIterator[Event]:
        if self.mode == "raise":
            raise RuntimeError("the engine is broken")
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        for i in range(3):
            yield DeltaEvent(index=0, text=f"t{i} ")
            if self.mode == "hold":
                self.held.set()
                await asyncio.sleep(3600)
        yield UsageEvent(prompt_tokens=2, completion_tokens=3)

    def close(self) -> None:
        assert self.runtime is not None
        self.closed_with_inflight = self.runtime.inflight

    def stats(self) -> dict[str, Any]:
        return {}

    def healthy(self) -> bool:
        return True


def _request() -> bytes:
    req = GenerateRequest(request_id="r1", model="m", kind="chat", messages=[{"role": "user", "content": "hi"}])
    return b"\n" + req.__pydantic_serializer__.to_json(req)


async def _worker(limit: int = 4) -> tuple[WorkerRuntime, ScriptedBackend, LaneClient]:
    backend = ScriptedBackend()
    runtime = WorkerRuntime(
        backend,  # type: ignore[arg-type]
        model_name="m", aliases=[], model_kind="llm", address="http://127.0.0.1:1", controller_address=None,
        limit=limit, heartbeat_interval=60, secret=SECRET,
    )
    backend.runtime = runtime
    runtime.state = "ready"
    runtime.lane = LaneServer(
        lane_handler(runtime), secret_ok=lambda given: given == SECRET.encode(), max_frame=1 << 20,
        too_large=lambda n: b"{}", streams=lane_streams(runtime),
    )
    await runtime.lane.start()
    return runtime, backend, LaneClient(SECRET)


def test_events_come_framed_and_errors_before_the_first_byte_are_answers_that_free_the_slot() -> None:
    async def main() -> None:
        runtime, backend, client = await _worker(limit=1)
        assert runtime.lane is not None
        path = runtime.lane.path
        try:
            stream = await client.generate(path, _request())
            assert isinstance(stream, LaneStream)
            lines = (await stream.read()).splitlines()
            assert [orjson.loads(x)["t"] for x in lines] == ["delta", "delta", "delta", "usage"]
            assert runtime.inflight == 0 and runtime.lane_streams_total == 1
            # a backend that fails outside its generator: a 500 in the OpenAI shape, not a lost worker
            backend.mode = "raise"
            status, body = await client.generate(path, _request())  # type: ignore[misc]
            assert status == 500 and orjson.loads(body)["error"]["message"] == "generation failed: RuntimeError"
            assert runtime.inflight == 0
            # a body that is not a request: 400; no token line at all: 400
            status, body = await client.generate(path, b"\n{}")  # type: ignore[misc]
            assert status == 400 and orjson.loads(body)["error"]["type"] == "invalid_request_error"
            status, _ = await client.generate(path, b"no newline")  # type: ignore[misc]
            assert status == 400
            # at its limit: 429 (the gateway tries another replica)
            backend.mode = "hold"
            held = await client.generate(path, _request())
            assert isinstance(held, LaneStream)
            await asyncio.wait_for(backend.held.wait(), 5)
            status, body = await client.generate(path, _request())  # type: ignore[misc]
            assert status == 429 and orjson.loads(body)["error"]["type"] == "rate_limit_error"
            held.close()  # the client hung up: the held generation stops, its slot is free
            for _ in range(100):
                if runtime.inflight == 0:
                    break
                await asyncio.sleep(0.02)
            assert runtime.inflight == 0
            assert len(runtime.lane.conns) <= 2  # errors kept their connections in step (pooled, reused)
        finally:
            client.close()
            runtime.lane.close()

    uvloop.run(main())


def test_a_stopping_worker_cuts_its_socket_streams_before_its_engine_closes() -> None:
    async def main() -> None:
        runtime, backend, client = await _worker()
        assert runtime.lane is not None
        backend.mode = "hold"
        try:
            stream = await client.generate(runtime.lane.path, _request())
            assert isinstance(stream, LaneStream)
            await asyncio.wait_for(backend.held.wait(), 5)
            assert runtime.inflight == 1
            await asyncio.wait_for(runtime.stop(drain_timeout=0.2), 10)
            assert backend.closed_with_inflight == 0  # the stream was over before the engine closed
            try:
                await asyncio.wait_for(stream.read(), 5)
            except ConnectionResetError:
                pass  # cut, as it must be: never an END
            else:
                raise AssertionError("a stream cut by a stopping worker read as whole")
        finally:
            client.close()
            runtime.lane.close()

    uvloop.run(main())
