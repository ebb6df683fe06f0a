"""How the gateway calls workers: dispatch, retry other replicas before the first byte.

The gateway talks to workers with aiohttp: pooled keep-alive connections, and a
response can be closed synchronously. That matters when a client hangs up: the
connection to the worker is cut at once, so the worker stops generating. A worker
running in this process (``inproc://`` address) is called through its ``InProcessTransport``,
which answers with the same response interface; its chat/completions are started
with ``InProcessTransport.generate`` and their events read as objects (``LocalEventStream``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import aiohttp
import orjson
from pydantic import BaseModel, ValidationError

from ..controller.client import ControllerClient
from ..errors import (
    GatewayError,
    ServiceUnavailableError,
    TimeoutError_,
    UpstreamError,
    error_from_body,
)
from ..protocol.kinds import Capability
from ..protocol.worker import (
    EVENT_ADAPTER,
    SECRET_HEADER,
    DispatchReply,
    ErrorEvent,
    Event,
    GenerateRequest,
    invoke_body,
)
from ..transport.direct import DIRECT_HEADER, HAND_NOW_HEADER, HandoffClient, is_loopback_address
from ..transport.inproc import InProcessTransport, LocalGeneration, LocalResponse, is_local
from ..transport.lane import LaneClient, LaneStream, LaneUnavailable
from .history import History

__all__ = ["WorkerClient", "EventStream", "LocalEventStream", "WorkerResponse"]

log = logging.getLogger(__name__)

_RETRY_STATUS = {429, 503}
_Response = aiohttp.ClientResponse | LocalResponse | LaneStream
_JSON = {"content-type": "application/json"}
T = TypeVar("T")


def _lane_error(status: int, answer: bytes) -> GatewayError:
    """A worker's error answer over the invoke socket, as the error it names."""
    try:
        error = orjson.loads(answer)
    except ValueError:
        error = None
    return error_from_body(status, error)


class WorkerResponse:
    """A worker's answer, body not yet read; ``close()`` when done with it. Closing cuts
    the connection (synchronous: safe while being cancelled) and tells the dispatcher,
    once, that the request has left that worker."""

    def __init__(self, response: _Response, on_close: Callable[[], None] | None = None) -> None:
        self.response = response
        self.headers = response.headers
        self.content = response.content
        self._on_close = on_close

    async def read(self) -> bytes:
        return await self.response.read()

    def close(self) -> None:
        self.response.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    async def aclose(self) -> None:
        self.close()


class EventStream(WorkerResponse):
    """Worker events, parsed; a broken connection becomes a final error event.

    ``batches()`` yields the events of one network read together, so a caller can
    answer them with one write.
    """

    def __init__(
        self,
        response: _Response,
        target: DispatchReply,
        on_close: Callable[[], None] | None = None,
        sent: float | None = None,
        direct: tuple[str, str] | None = None,
    ) -> None:
        """``sent``: when the request was sent (``time.perf_counter()``; time to first token counts from it);
        ``direct``: (the worker's hand-off socket, the stream's token) where the worker waits for the
        client's connection (``transport.direct``)."""
        super().__init__(response, on_close)
        self.target = target
        self.sent = time.perf_counter() if sent is None else sent
        self.direct = direct

    async def batches(self) -> AsyncIterator[list[Event]]:
        buf = bytearray()  # grown in place: a whole answer is one line of many reads
        try:
            async for chunk in self.response.content.iter_any():
                buf += chunk
                if b"\n" not in chunk:
                    continue
                *lines, buf = buf.split(b"\n")
                events: list[Event] = []
                for line in lines:
                    if not line:
                        continue
                    try:
                        events.append(EVENT_ADAPTER.validate_json(line))
                    except ValidationError:
                        log.error("worker %s sent a malformed event", self.target.worker_id)
                        events.append(ErrorEvent(status=502, type="server_error", message="malformed event from worker", code="upstream_error"))
                        yield events
                        return
                if events:
                    yield events
            if buf.strip():
                yield [EVENT_ADAPTER.validate_json(buf)]
        except (TimeoutError, aiohttp.ClientError, ConnectionError, ValidationError) as exc:
            log.warning("lost worker %s mid-stream: %s", self.target.worker_id, type(exc).__name__)
            yield [
                ErrorEvent(
                    status=502,
                    type="server_error",
                    message="the model worker stopped responding during generation",
                    code="worker_lost",
                )
            ]
        finally:
            self.close()


class LocalEventStream:
    """The events of a worker in this process, iterated in the caller's own task (one
    event a batch: no network read to group them). ``aclose()`` stops the generation and
    tells the dispatcher, once."""

    direct: tuple[str, str] | None = None  # never handed over: the worker shares the gateway's loop

    def __init__(self, generation: LocalGeneration, target: DispatchReply, on_close: Callable[[], None], sent: float | None = None) -> None:
        self.generation = generation
        self.target = target
        self.sent = time.perf_counter() if sent is None else sent
        self._on_close: Callable[[], None] | None = on_close

    async def batches(self) -> AsyncIterator[list[Event]]:
        try:
            async with contextlib.aclosing(self.generation.events()) as events:
                async for ev in events:
                    yield [ev]
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is None:
            return
        try:
            await self.generation.aclose()
        finally:
            on_close()


class WorkerClient:
    """The gateway's side of the worker protocol: picks a replica through the controller,
    sends the request (HTTP, or the in-process transport), retries another replica while
    nothing has been answered yet, and hands back the worker's response or events.

    ``timeout`` (``serve_args.request_timeout``) is one deadline for the whole request:
    dispatch, every retry and the wait for the worker's answer share it (``deadline()``),
    and a caller that reads the answer reads it within the same deadline. It also bounds
    each read from a worker (a worker silent that long mid-stream is lost).
    """

    def __init__(
        self,
        controller: ControllerClient,
        *,
        max_retries: int = 2,
        secret: str | None = None,
        timeout: float = 600.0,
        local: InProcessTransport | None = None,
        verify: ssl.SSLContext | None = None,
        history: History | None = None,
    ) -> None:
        """``verify``: how https:// workers are verified (the system's CAs when None);
        ``history``: told when a request is open on a worker and when it leaves (the dashboard)."""
        self.history = history
        self.controller = controller
        self._verify: ssl.SSLContext | bool = verify if verify is not None else True
        self.local = local  # the in-process workers of this serve process, if any
        self.max_retries = max_retries
        self.request_timeout = timeout
        self._headers = {SECRET_HEADER: secret} if secret else {}
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=timeout)
        # a generation's events are read under the request's deadline (SSE, collect), which
        # bounds them as the read timeout did, without a timer rescheduled on every read
        self._event_timeout = aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=None)
        self._session: aiohttp.ClientSession | None = None
        self.handoff = HandoffClient()  # streams handed to workers on this host (transport.direct)
        self.lane = LaneClient(secret)  # JSON calls to workers on this host (transport.lane)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ssl=self._verify),
                timeout=self._timeout,
                headers=self._headers,
                auto_decompress=False,
            )
        return self._session

    async def aclose(self) -> None:
        self.handoff.close()
        self.lane.close()
        if self._session is not None:
            await self._session.close()

    async def resolve(self, model: str, capability: str) -> str:
        """The model a request naming ``model`` (``""``: none) for ``capability`` goes to."""
        return await self.controller.resolve(model, capability)

    def deadline(self) -> float:
        """The event-loop time by which a request starting now must be answered."""
        return asyncio.get_running_loop().time() + self.request_timeout

    def timed_out(self) -> TimeoutError_:
        return TimeoutError_(f"the request did not finish within {self.request_timeout:g} seconds")

    async def _within(self, deadline: float | None, work: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout_at(self.deadline() if deadline is None else deadline):
                return await work
        except TimeoutError:
            raise self.timed_out() from None

    async def open(
        self,
        model: str,
        request: GenerateRequest,
        *,
        deadline: float | None = None,
        affinity: str | None = None,
        direct: bool = False,
    ) -> EventStream | LocalEventStream:
        """Start a chat/completion on a worker; the stream of events it answers, its first
        event before ``deadline`` (loop time; default: the request timeout from now).
        ``affinity``: the key that sends related requests to one replica (``Registry.dispatch``);
        ``direct``: a worker on this host that offers a hand-off socket is asked to wait for the
        client's connection (the stream's ``direct``; ``transport.direct``)."""
        payload = b""
        handed: tuple[str, str] | None = None

        async def call(target: DispatchReply) -> _Response | LocalGeneration:
            nonlocal payload, handed
            if self.local is not None and self.local.generates(target.address):  # in this process: the events themselves
                async with asyncio.timeout(self._timeout.sock_read):
                    return await self.local.generate(target.address, request)
            if not payload:
                payload = request.__pydantic_serializer__.to_json(request)
            handed = None
            local = is_loopback_address(target.address)
            path = target.stream_socket
            if direct and path and local and self.handoff.reachable(path):
                handed = (path, secrets.token_hex(16))
            lane = target.invoke_socket
            if lane and local and self.lane.usable(lane):  # over the invoke socket (transport.lane)
                try:
                    answer = await self.lane.generate(lane, (handed[1].encode() if handed else b"") + b"\n" + payload)
                except LaneUnavailable:
                    pass  # not reachable from here: over HTTP (``usable`` says no for a while)
                else:
                    if isinstance(answer, LaneStream):
                        if answer.flags & 1:
                            answer.headers[HAND_NOW_HEADER] = "1"
                        return answer
                    raise _lane_error(*answer)
            if handed:
                return await self._post(target, "/worker/generate", payload, events=True, headers={**_JSON, DIRECT_HEADER: handed[1]})
            return await self._post(target, "/worker/generate", payload, events=True)

        sent = time.perf_counter()
        result, target = await self._within(deadline, self._send(model, request.kind, call, affinity))
        on_close = self._releaser(target, sent)
        if isinstance(result, (aiohttp.ClientResponse, LocalResponse, LaneStream)):
            return EventStream(result, target, on_close, sent, direct=handed)
        return LocalEventStream(result, target, on_close, sent)

    async def invoke(
        self, model: str, capability: Capability, payload: BaseModel, request_id: str, *, deadline: float | None = None
    ) -> WorkerResponse:
        """Call a non-generation capability; the worker's response, body not yet read, its
        status line before ``deadline`` (as ``open``).

        ``payload`` is the capability's payload model. The caller must read the response or
        ``close()`` it. JSON results have content-type application/json; binary results
        (audio, images) carry their own media type.
        """
        body = invoke_body(request_id, model, capability, payload)
        sent = time.perf_counter()
        resp, target = await self._within(deadline, self._send(model, capability, lambda t: self._post(t, "/worker/invoke", body)))
        return WorkerResponse(resp, self._releaser(target, sent))

    async def invoke_json(
        self, model: str, capability: Capability, payload: BaseModel, request_id: str, *, deadline: float | None = None
    ) -> bytes:
        """Call a capability whose result is JSON; the result's bytes, all of it before
        ``deadline`` (dispatch, retries and the answer). A worker on this host with an invoke
        socket is called over it (``transport.lane``), any other over HTTP."""
        body = invoke_body(request_id, model, capability, payload)
        deadline = self.deadline() if deadline is None else deadline

        async def call(target: DispatchReply) -> bytes | _Response:
            path = target.invoke_socket
            if path and self.lane.usable(path) and is_loopback_address(target.address):
                try:
                    status, answer = await self.lane.call(path, body)
                except LaneUnavailable:
                    pass  # not reachable from here: over HTTP (``usable`` says no for a while)
                else:
                    if status == 200:
                        return answer
                    raise _lane_error(status, answer)
            return await self._post(target, "/worker/invoke", body)

        sent = time.perf_counter()
        result, target = await self._within(deadline, self._send(model, capability, call))
        release = self._releaser(target, sent)
        if isinstance(result, bytes):
            release()
            return result
        resp = WorkerResponse(result, release)
        try:
            async with asyncio.timeout_at(deadline):
                return await resp.read()
        except TimeoutError as exc:
            if asyncio.get_running_loop().time() >= deadline:
                raise self.timed_out() from None
            raise UpstreamError("the model worker stopped responding") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("the model worker stopped responding") from exc
        finally:
            resp.close()

    def _releaser(self, target: DispatchReply, sent: float) -> Callable[[], None]:
        """What closing a worker's answer does (once): the dispatcher and the history hear of it."""
        history = self.history
        if history is None:
            return lambda: self.controller.done(target.worker_id)

        def release() -> None:
            self.controller.done(target.worker_id)
            history.end(target.model_name, time.perf_counter() - sent)

        return release

    async def _post(
        self, target: DispatchReply, path: str, payload: bytes, events: bool = False, headers: dict[str, str] | None = None
    ) -> _Response:
        """POST to a worker; its response if 200, else the error it answered, raised.
        ``events``: a generation, whose reads the caller bounds with the request's deadline."""
        resp: _Response
        if is_local(target.address):
            if self.local is None:
                raise aiohttp.ClientConnectionError(f"no in-process worker at {target.address}")
            resp = await self.local.post(target.address, path, payload, self._headers, read_timeout=self._timeout.sock_read)
        else:
            timeout = self._event_timeout if events else self._timeout
            resp = await self._client().post(f"{target.address}{path}", data=payload, headers=headers or _JSON, timeout=timeout)
        if resp.status == 200:
            return resp
        try:
            raw = await resp.read()
        except aiohttp.ClientError:
            raw = b""
        finally:
            resp.release()
        try:
            body = orjson.loads(raw)
        except ValueError:
            body = None
        raise error_from_body(resp.status, body)

    def _failed(self, target: DispatchReply) -> None:
        """A request that never got an answer from ``target`` has left it."""
        self.controller.done(target.worker_id)
        if self.history is not None:
            self.history.abort(target.model_name)

    async def _send(
        self, model: str, capability: str, call: Callable[[DispatchReply], Awaitable[T]], affinity: str | None = None
    ) -> tuple[T, DispatchReply]:
        """Dispatch and ``call`` the chosen worker; other replicas are tried when one cannot
        be reached or answers 429/503. The worker is the dispatcher's until the caller
        releases it (success) or at once (failure)."""
        exclude: list[str] = []
        last: GatewayError | None = None
        for _ in range(self.max_retries + 1):
            try:
                target = await self.controller.dispatch(model, exclude, capability, affinity)
            except GatewayError as exc:
                if last is not None and exc.status in (404, 503):
                    raise last from None
                raise
            if self.history is not None:
                self.history.begin(target.model_name)  # open from now on: ``end`` or ``abort`` follows
            try:
                return await call(target), target
            except (TimeoutError, aiohttp.ClientConnectionError, ConnectionError) as exc:
                self._failed(target)
                log.warning("worker %s unreachable (%s); trying another replica", target.worker_id, type(exc).__name__)
                await self.controller.report_failure(target.worker_id)
                exclude.append(target.worker_id)
                last = ServiceUnavailableError(f"no reachable worker for model '{model}'")
            except GatewayError as exc:
                self._failed(target)
                if exc.status not in _RETRY_STATUS:
                    raise
                exclude.append(target.worker_id)
                last = exc
            except BaseException:  # cancelled (client gone, deadline): not on that worker any more
                self._failed(target)
                raise
        assert last is not None
        raise last
