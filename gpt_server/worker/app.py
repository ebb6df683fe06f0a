"""The worker's HTTP routes, written once for every backend.

This is the internal gateway → worker API, so it runs on plain Starlette routes: the
body is validated by pydantic straight from its bytes, and there is no dependency
solving or response-model pass per request (FastAPI's cost, paid once already at
the gateway). The internal secret is checked by a small ASGI middleware. A gateway on the
worker's host sends the same calls over the worker's invoke socket instead (``transport.lane``:
``lane_handler`` for invoke calls, ``lane_streams`` for chats and completions), with the same answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..backends.base import ANSWER_SINK, BinaryResult
from ..errors import AuthenticationError, BadRequestError, GatewayError, InternalError
from ..procs import settle_heap
from ..protocol.deltas import DELTA_WRITER, Answer, DeltaWriter
from ..protocol.embeddings import EMBED
from ..protocol.kinds import Capability, capability
from ..protocol.worker import (
    SECRET_HEADER,
    AdapterChange,
    Event,
    GenerateRequest,
    InvokeRequest,
    secret_matches,
)
from ..transport.direct import DIRECT_HEADER, HAND_NOW_HEADER, stream_token, write_stream
from ..transport.lane import LaneReply, Streamed
from ..web.error_handlers import install_error_handlers, validation_message
from ..web.limits import BodyLimitMiddleware
from ..web.responses import (
    ClosingStreamingResponse,
    FastJSONResponse,
    aclose_then,
    error_response,
    first_chunk,
)
from .generation import Generation
from .runtime import WorkerRuntime

__all__ = [
    "build_worker_app", "lane_handler", "lane_streams", "lane_secret_check", "open_generation", "run_invoke", "DEFAULT_MAX_BODY_BYTES",
]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

# bodies above this are parsed in a thread (a 25 MiB audio upload must not stall other streams)
_PARSE_OFF_LOOP_BYTES = 256 * 1024


def _line(ev: Event) -> bytes:
    return ev.__pydantic_serializer__.to_json(ev) + b"\n"


def _bad_request(exc: ValidationError) -> BadRequestError:
    message, param = validation_message(exc.errors())
    return BadRequestError(message, param=param)


def _validated(model: type[M], raw: bytes) -> M:
    """``raw`` as ``model``; a 400 in the OpenAI shape when it does not fit."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _bad_request(exc) from None


async def _parse(request: Request, model: type[M]) -> M:
    """The request body as ``model`` (``_validated``)."""
    return _validated(model, await request.body())


def _typed_invoke(body: bytes, served: frozenset[str], model_name: str) -> tuple[Capability, BaseModel, str]:
    """An invoke body as (capability, its typed payload, the model named): the one place a payload is validated."""
    try:
        req = InvokeRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _bad_request(exc) from None
    try:
        cap = capability(req.capability)
    except KeyError:
        raise BadRequestError(f"unknown capability '{req.capability}'", param="capability") from None
    if cap not in served or cap.payload is None:
        raise BadRequestError(f"model '{model_name}' does not support {cap}", param="model")
    try:
        return cap, cap.parse(req.payload), req.model
    except ValidationError as exc:
        raise _bad_request(exc) from None


def _stamp(result: Any, cap: Capability, model: str) -> Any:
    """An embeddings result names the model the client used (resolved by the gateway), which
    sends the body on as is."""
    if cap == EMBED and isinstance(result, dict):
        result["model"] = model
    return result


class _EmbedAnswer:
    """An embeddings body sent from the engine's thread over the invoke socket (``ANSWER_SINK``)."""

    def __init__(self, reply: LaneReply, model: str) -> None:
        self.reply, self.model = reply, model

    @property
    def sent(self) -> bool:
        return self.reply.sent

    def send(self, result: dict[str, Any]) -> bool:
        return self.reply.send(orjson.dumps(_stamp(result, EMBED, self.model)))


async def run_invoke(runtime: WorkerRuntime, body: bytes, reply: LaneReply | None = None) -> tuple[Any, Callable[[], None]]:
    """An invoke body run on the backend: its result, and what releases the worker's slot
    (call it once, when the result has been sent). Errors raise ``GatewayError``. ``reply``: an
    invoke-socket call's answer, which an embeddings backend may send from its engine's thread
    (then ``reply.sent``, and the result is not to be sent again)."""
    served = runtime.backend.capabilities
    if len(body) > _PARSE_OFF_LOOP_BYTES:
        cap, payload, model = await asyncio.to_thread(_typed_invoke, body, served, runtime.model_name)
    else:
        cap, payload, model = _typed_invoke(body, served, runtime.model_name)
    runtime.admit()
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            runtime.release()

    # an embeddings call over the socket may be answered by the engine's thread (claim: its descriptor)
    sink = ANSWER_SINK.set(_EmbedAnswer(reply, model) if reply is not None and cap == EMBED and reply.claim() else None)
    try:
        result: Any = await runtime.backend.invoke(cap, payload)
    except GatewayError:
        release()
        raise
    except BaseException as exc:
        release()
        if not isinstance(exc, Exception):
            raise  # cancelled: the caller is gone
        runtime.last_error = str(exc)
        log.exception("%s failed", cap)
        raise InternalError(f"{cap} failed: {type(exc).__name__}") from exc
    finally:
        ANSWER_SINK.reset(sink)
    return _stamp(result, cap, model), release


def lane_secret_check(secret: str | None) -> Callable[[bytes], bool]:
    """Whether an invoke-socket connection's first frame is the internal secret (anything when there is none)."""
    if not secret:
        return lambda given: True
    return lambda given: secret_matches(given, secret)


def lane_handler(runtime: WorkerRuntime) -> Callable[[bytes, LaneReply | None], Awaitable[tuple[int, bytes]]]:
    """The invoke socket's calls (``transport.lane``): an invoke body → (status, JSON answer)."""

    async def handle(body: bytes, reply: LaneReply | None) -> tuple[int, bytes]:
        runtime.lane_calls_total += 1
        try:
            result, release = await run_invoke(runtime, body, reply)
        except GatewayError as exc:
            return exc.status, exc.to_json()
        try:
            if reply is not None and reply.sent:
                runtime.lane_early_total += 1
                return 200, b""  # sent from the engine's thread
            if isinstance(result, BinaryResult):  # a body made by the backend (diffusers' JSON): as over HTTP
                if isinstance(result.body, bytes):
                    return 200, result.body
                try:
                    return 200, b"".join([chunk async for chunk in result.body])
                except Exception as exc:  # cut mid-body: an error, not a lost worker (no other replica runs it again)
                    runtime.last_error = str(exc)
                    log.exception("the body of a call failed")
                    err = InternalError(f"the result failed: {type(exc).__name__}")
                    return err.status, err.to_json()
            return 200, orjson.dumps(result)
        finally:
            release()

    return handle


async def open_generation(
    runtime: WorkerRuntime, req: GenerateRequest, token: str | None
) -> tuple[Generation, AsyncGenerator[bytes, None], bool]:
    """Start ``req`` (errors raise ``GatewayError``): the generation, its answer's body (ndjson
    event lines; the first chunk is the one that goes with the status line), and whether the
    engine has the request already, so that a handed stream's connection may come now
    (``HAND_NOW_HEADER``). ``token``: the stream's hand-off token where the gateway may hand
    the client's connection over (``transport.direct``). Close the body, then ``gen.aclose``."""
    token = token if runtime.handoff is not None and not req.whole else None
    # a stream this worker may write itself, or an answer sent whole: the engine may take
    # deltas on its own thread (protocol.deltas)
    answer = Answer() if req.whole else None
    # a handed stream's connection may come before its first token (``announce``)
    deltas = answer.writer if answer is not None else DeltaWriter(announce=True) if token else None
    reset = DELTA_WRITER.set(deltas)
    try:
        gen = await Generation.start(runtime, req)
    finally:
        DELTA_WRITER.reset(reset)

    async def body() -> AsyncGenerator[bytes, None]:
        if answer is not None:  # the status line now, the answer in one write at its end
            answer.take()
            yield b""
            try:
                yield b"".join(_line(ev) for ev in await gen.whole(answer))
            finally:
                runtime.deltas_direct_total += answer.writer.taken
            return
        async with contextlib.aclosing(gen.events()) as events:
            if token and runtime.handoff is not None:  # the client's connection may come (transport.direct)
                if gen.admitted:
                    # the engine has the request: the status line now (the gateway writes the
                    # head and hands the connection over during the prefill), every event after
                    yield b""
                else:
                    # the first event goes with the status line (the gateway writes it, then
                    # hands the connection over): nothing more until the hand-off
                    first = await anext(events, None)
                    if first is None:
                        return
                    yield _line(first)
                handoff = await runtime.handoff.take(token)
                if handoff.sock is not None:
                    runtime.handed_before_first_total += gen.admitted
                    try:
                        end = await write_stream(handoff, events, deltas, first=gen.admitted)
                    except OSError as exc:  # the client's connection broke: the gateway sees it too
                        log.info("direct stream ended: %s", type(exc).__name__)
                        return
                    finally:
                        runtime.handoff.finished(handoff)
                        if deltas is not None:
                            runtime.deltas_direct_total += deltas.taken
                    yield b"".join(_line(ev) for ev in end)
                    return
            async for ev in events:
                yield _line(ev)

    return gen, body(), gen.admitted


def lane_streams(runtime: WorkerRuntime) -> Callable[[bytes], Awaitable[tuple[int, bytes] | Streamed]]:
    """The invoke socket's ``GENERATE`` calls (``transport.lane``): the body is the stream's
    hand-off token (or nothing), a newline and the ``GenerateRequest`` JSON; the answer is
    ``POST /worker/generate``'s, framed (``Streamed``), or (status, OpenAI error body)."""

    async def handle(body: bytes) -> tuple[int, bytes] | Streamed:
        runtime.lane_streams_total += 1
        token, sep, raw = body.partition(b"\n")
        try:
            if not sep:
                raise BadRequestError("a generate call is the hand-off token, a newline and the request")
            if len(raw) > _PARSE_OFF_LOOP_BYTES:
                req = await asyncio.to_thread(_validated, GenerateRequest, raw)
            else:
                req = _validated(GenerateRequest, raw)
            gen, chunks, now = await open_generation(runtime, req, stream_token(token.decode("ascii", "replace") or None))
        except GatewayError as exc:
            return exc.status, exc.to_json()
        except Exception:  # a bug: a 500, as over HTTP (not a lost worker, which the gateway would retry elsewhere)
            log.exception("a generate call failed")
            err = InternalError("internal error", code="internal_error")
            return err.status, err.to_json()
        try:
            first, failed = await first_chunk(chunks)  # a failure before it is an answer of its own, as over HTTP
        except BaseException:
            await aclose_then(chunks, gen.aclose)
            raise
        if failed is not None:
            await aclose_then(chunks, gen.aclose)
            return failed.status, failed.to_json()
        return Streamed(1 if now else 0, first, chunks, gen.aclose)

    return handle


class _SecretMiddleware:
    """401 for any HTTP request without the internal secret (when one is set)."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        self.app = app
        self.secret = secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((v for k, v in scope.get("headers", ()) if k == _SECRET_KEY), b"")
            if not secret_matches(given, self.secret):
                resp = error_response(AuthenticationError("missing or wrong internal secret", code="invalid_secret"))
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


_SECRET_KEY = SECRET_HEADER.lower().encode()


# the gateway's body limit is for client bodies; what it forwards can be larger (base64 of an upload)
DEFAULT_MAX_BODY_BYTES = 2 * 16 * 1024 * 1024


def build_worker_app(runtime: WorkerRuntime, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Starlette:
    """The worker routes (Starlette: no /docs or /openapi.json), behind the internal secret when
    one is set and a body limit; payloads are validated with the same bounds as the gateway's."""
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        settle_heap()  # a worker process serves this one model: its loaded heap stays as is
        yield
        await runtime.stop()

    async def health(request: Request) -> Response:
        ok = runtime.ready()
        status = runtime.state if ok or runtime.state in ("loading", "draining") else "unhealthy"
        return FastJSONResponse({"status": status}, status_code=200 if ok else 503)

    async def info(request: Request) -> Response:
        return FastJSONResponse(
            {
                **runtime.info().model_dump(),
                "state": runtime.state,
                "inflight": runtime.inflight,
                "requests_total": runtime.requests_total,
                "deltas_direct_total": runtime.deltas_direct_total,
                "handed_before_first_total": runtime.handed_before_first_total,
                "lane_calls_total": runtime.lane_calls_total,
                "lane_early_total": runtime.lane_early_total,
                "lane_streams_total": runtime.lane_streams_total,
                "last_error": runtime.last_error,
                "engine_stats": runtime.backend.stats(),
            }
        )

    async def generate(request: Request) -> Response:
        req = await _parse(request, GenerateRequest)
        try:
            gen, body, now = await open_generation(runtime, req, stream_token(request.headers.get(DIRECT_HEADER)))
        except GatewayError as exc:
            return error_response(exc)
        return ClosingStreamingResponse(
            body, on_close=gen.aclose, media_type="application/x-ndjson", headers={HAND_NOW_HEADER: "1"} if now else None
        )

    async def invoke(request: Request) -> Response:
        result, release = await run_invoke(runtime, await request.body())
        if isinstance(result, BinaryResult):
            if isinstance(result.body, bytes):
                release()
                return Response(result.body, media_type=result.media_type, headers=result.headers)

            async def on_close() -> None:
                release()

            return ClosingStreamingResponse(result.body, on_close=on_close, media_type=result.media_type, headers=result.headers)
        release()
        return FastJSONResponse(result)

    async def adapters(request: Request) -> Response:
        change = await _parse(request, AdapterChange)
        served = await runtime.change_adapter(change.op, change.name, change.path)
        return FastJSONResponse({"adapters": served})

    app = Starlette(
        routes=[
            Route("/worker/adapters", adapters, methods=["POST"]),
            Route("/worker/health", health, methods=["GET"]),
            Route("/worker/info", info, methods=["GET"]),
            Route("/worker/generate", generate, methods=["POST"]),
            Route("/worker/invoke", invoke, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes)
    if runtime.secret:  # outermost: nothing is read from a caller without the secret
        app.add_middleware(_SecretMiddleware, secret=runtime.secret)
    return app
