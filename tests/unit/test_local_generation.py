"""Generations on ``in_process`` workers, iterated as objects by the relay (no NDJSON).

Real worker runtimes (the echo backend, swapped for small failing backends to reach the
error paths) registered the way ``serve`` does it, the real registry and relay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from gpt_server.backends.echo.backend import EchoBackend
from gpt_server.config import Config
from gpt_server.controller.client import LocalController
from gpt_server.controller.dispatch import make_policy
from gpt_server.controller.registry import Registry, WorkerRecord
from gpt_server.errors import BadRequestError, InternalError, TimeoutError_
from gpt_server.gateway.workers import LocalEventStream, WorkerClient
from gpt_server.launcher import LocalWorker, _local_workers
from gpt_server.protocol.worker import (
    EVENT_ADAPTER,
    DeltaEvent,
    ErrorEvent,
    FinishEvent,
    GenerateRequest,
    SamplingParams,
    UsageEvent,
)
from gpt_server.transport.inproc import InProcessTransport


def _config(replicas: int) -> Config:
    entry = {"model_config": {"model_name_or_path": "echo"}, "work_mode": "echo", "device": "cpu",
             "workers": [{"gpus": [], "in_process": True} for _ in range(replicas)]}
    return Config.model_validate({"model_worker_args": {"heartbeat_interval": 0.05}, "models": [{"echo": entry}]})


def _request(max_tokens: int = 5) -> GenerateRequest:
    return GenerateRequest(request_id="r1", model="echo", kind="chat", messages=[{"role": "user", "content": "one two three"}],
                           params=SamplingParams(max_tokens=max_tokens))


class _Env:
    def __init__(self, registry: Registry, workers: list[LocalWorker], timeout: float, transport: InProcessTransport) -> None:
        self.registry = registry
        self.transport = transport
        self.workers = workers
        self.client = WorkerClient(LocalController(registry), max_retries=2, timeout=timeout, local=transport)

    def record(self, replica: int) -> WorkerRecord:
        return next(r for r in self.registry.workers.values() if r.info.replica == replica)

    def counts(self) -> list[tuple[int, int]]:
        """(dispatcher's open requests, worker's admitted requests) per replica."""
        return [(self.record(w.replica).tracked, w.runtime.inflight) for w in self.workers]


async def _start(replicas: int, policy: str, timeout: float) -> _Env:
    registry = Registry(make_policy(policy))
    transport = InProcessTransport()
    workers = _local_workers(_config(replicas), registry, transport)
    for w in workers:
        await w.start()
    async with asyncio.timeout(10):
        while len(registry.workers) < replicas:
            await asyncio.sleep(0.01)
    return _Env(registry, workers, timeout, transport)


async def _stop(env: _Env) -> None:
    await env.client.aclose()
    for w in env.workers:
        await w.stop()


@contextlib.asynccontextmanager
async def _served(
    replicas: int = 1, backend: type[EchoBackend] | None = None, policy: str = "shortest_queue", timeout: float = 600.0
) -> AsyncIterator[_Env]:
    """Echo replicas in this process (their backend swapped for ``backend``), stopped after."""
    env = await _start(replicas, policy, timeout)
    if backend is not None:
        for w in env.workers:
            w.runtime.backend = backend(w.runtime.backend.spec)
    try:
        yield env
    finally:
        await _stop(env)


async def _events(stream) -> list:  # noqa: ANN001
    return [ev async for batch in stream.batches() for ev in batch]


def test_objects_equal_the_http_route_bytes() -> None:
    async def go() -> None:
        async with _served() as env:
            stream = await env.client.open("echo", _request())
            assert isinstance(stream, LocalEventStream)
            local = await _events(stream)
            # the same worker's HTTP route (through the byte bridge) answers the same events
            address = env.workers[0].runtime.address
            resp = await env.transport.post(address, "/worker/generate", _request().model_dump_json().encode())
            over_http = [EVENT_ADAPTER.validate_json(line) for line in (await resp.read()).splitlines() if line]
            assert local == over_http
            assert [type(e) for e in local] == [DeltaEvent] * 5 + [FinishEvent, UsageEvent]
            assert "".join(e.text for e in local if isinstance(e, DeltaEvent)) == "one two three one two"
            assert env.counts() == [(0, 0)]
            assert env.workers[0].runtime.tokens_total == 10  # both generations counted

    asyncio.run(go())


def test_a_replica_that_refuses_is_skipped() -> None:
    async def go() -> None:
        async with _served(2, policy="round_robin") as env:  # replica 0 is tried in turn
            env.workers[0].runtime.state = "draining"  # admission answers 503
            for _ in range(3):
                stream = await env.client.open("echo", _request())
                assert stream.target.worker_id == env.workers[1].runtime.worker_id
                assert isinstance((await _events(stream))[-1], UsageEvent)
            assert env.record(0).dispatched_total >= 1  # it was asked, and refused
            assert env.counts() == [(0, 0), (0, 0)]
            env.workers[0].runtime.state = "ready"

    asyncio.run(go())


class _Endless(EchoBackend):
    """Streams until closed; records that its generator was closed."""

    closed = False

    async def generate(self, request: GenerateRequest) -> AsyncIterator:
        try:
            i = 0
            while True:
                yield DeltaEvent(index=0, text=f" {i}")
                i += 1
                await asyncio.sleep(0.001)
        finally:
            _Endless.closed = True


class _FailsFirst(EchoBackend):
    async def generate(self, request: GenerateRequest) -> AsyncIterator:
        if request.params.max_tokens == 1:
            raise BadRequestError("max_tokens too small", param="max_tokens")
        raise RuntimeError("engine exploded")
        yield  # an async generator


class _SlowStart(EchoBackend):
    """Its first event takes longer than the relay waits."""

    closed = 0

    async def generate(self, request: GenerateRequest) -> AsyncIterator:
        try:
            await asyncio.sleep(30)
            yield DeltaEvent(index=0, text="late")
        finally:
            _SlowStart.closed += 1


class _FailsLater(EchoBackend):
    async def generate(self, request: GenerateRequest) -> AsyncIterator:
        yield DeltaEvent(index=0, text="partial")
        raise RuntimeError("engine died")


def test_closing_mid_stream_stops_the_engine_and_releases() -> None:
    async def go() -> None:
        _Endless.closed = False
        async with _served(backend=_Endless) as env:
            batches = (await env.client.open("echo", _request())).batches()
            for _ in range(3):
                assert isinstance((await anext(batches))[0], DeltaEvent)
            assert env.counts() == [(1, 1)]
            await batches.aclose()
            assert _Endless.closed and env.counts() == [(0, 0)]

    asyncio.run(go())


def test_cancelling_the_reader_stops_the_engine() -> None:
    """A client that hangs up cancels the request's task, which is where the events are read."""

    async def go() -> None:
        _Endless.closed = False
        async with _served(backend=_Endless) as env:
            stream = await env.client.open("echo", _request())
            seen = asyncio.Event()

            async def read() -> None:
                async for _ in stream.batches():
                    seen.set()

            task = asyncio.create_task(read())
            await seen.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert _Endless.closed and env.counts() == [(0, 0)]

    asyncio.run(go())


def test_errors_before_the_first_event_are_raised() -> None:
    async def go() -> None:
        async with _served(2, backend=_FailsFirst) as env:
            with pytest.raises(BadRequestError) as e:
                await env.client.open("echo", _request(max_tokens=1))
            assert e.value.status == 400 and e.value.param == "max_tokens"
            with pytest.raises(InternalError) as e:
                await env.client.open("echo", _request())
            assert e.value.status == 500 and "RuntimeError" in e.value.message
            assert env.counts() == [(0, 0), (0, 0)]
            assert any(w.runtime.last_error == "engine exploded" for w in env.workers)

    asyncio.run(go())


def test_a_first_event_past_the_timeout_is_a_504_and_frees_the_replica() -> None:
    async def go() -> None:
        _SlowStart.closed = 0
        async with _served(2, backend=_SlowStart, timeout=0.2) as env:
            with pytest.raises(TimeoutError_):  # one deadline for the request, not one per replica tried
                await env.client.open("echo", _request())
            assert _SlowStart.closed == 1  # the replica tried: its generation stopped
            assert env.counts() == [(0, 0), (0, 0)]

    asyncio.run(go())


def test_an_error_mid_stream_is_the_last_event() -> None:
    async def go() -> None:
        async with _served(backend=_FailsLater) as env:
            events = await _events(await env.client.open("echo", _request()))
            assert events[0] == DeltaEvent(index=0, text="partial")
            assert isinstance(events[-1], ErrorEvent) and events[-1].status == 500 and len(events) == 2
            assert env.counts() == [(0, 0)]

    asyncio.run(go())


def test_heartbeats_reach_the_registry_without_http() -> None:
    """The controller forgets the worker (as after a restart): the next heartbeat registers it again."""

    async def go() -> None:
        async with _served() as env:
            rt = env.workers[0].runtime
            assert type(rt._link).__name__ == "RegistryLink"
            env.registry.unregister(rt.worker_id)
            async with asyncio.timeout(5):
                while rt.worker_id not in env.registry.workers:
                    await asyncio.sleep(0.01)
            rt.requests_total = 7
            async with asyncio.timeout(5):
                while env.registry.workers[rt.worker_id].requests_total != 7:
                    await asyncio.sleep(0.01)

    asyncio.run(go())


class _Spy(EchoBackend):
    seen: list[GenerateRequest] = []

    async def generate(self, request: GenerateRequest) -> AsyncIterator:
        _Spy.seen.append(request)
        async for ev in super().generate(request):
            yield ev


def test_the_request_object_itself_reaches_the_backend() -> None:
    """Nothing is serialised on the way in process."""

    async def go() -> None:
        async with _served(backend=_Spy) as env:
            req = _request()
            await _events(await env.client.open("echo", req))
            assert len(_Spy.seen) == 1 and _Spy.seen[0] is req

    asyncio.run(go())
