"""The worker's HTTP routes, written once for every backend."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI
from fastapi.responses import Response, StreamingResponse

from ..backends.base import BinaryResult
from ..controller.app import secret_guard
from ..errors import BadRequestError, GatewayError, InternalError
from ..protocol.worker import ErrorEvent, Event, GenerateRequest, InvokeRequest, UsageEvent
from ..server_common import FastJSONResponse, error_response, install_error_handlers
from .runtime import WorkerRuntime

__all__ = ["build_worker_app"]

log = logging.getLogger(__name__)


def _line(ev: Event) -> bytes:
    return ev.__pydantic_serializer__.to_json(ev) + b"\n"


def _error_line(exc: GatewayError) -> bytes:
    return _line(ErrorEvent(status=exc.status, type=exc.openai_type, message=exc.message, param=exc.param, code=exc.code))


class _CleanupStream(StreamingResponse):
    """A stream whose cleanup runs even when the client leaves before the first byte."""

    def __init__(self, content: AsyncIterator[bytes], cleanup, **kw) -> None:  # noqa: ANN001
        super().__init__(content, **kw)
        self._cleanup = cleanup

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()


def build_worker_app(runtime: WorkerRuntime) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        yield
        await runtime.stop()

    app = FastAPI(
        title=f"GPT Server worker ({runtime.model_name})",
        lifespan=lifespan,
        dependencies=[Depends(secret_guard(runtime.secret))],
    )
    app.state.runtime = runtime
    install_error_handlers(app)

    @app.get("/worker/health")
    async def health() -> FastJSONResponse:
        ok = runtime.ready()
        return FastJSONResponse({"status": runtime.state if ok else "unhealthy"}, status_code=200 if ok else 503)

    @app.get("/worker/info")
    async def info() -> dict:
        return {
            **runtime.info().model_dump(),
            "state": runtime.state,
            "inflight": runtime.inflight,
            "requests_total": runtime.requests_total,
            "last_error": runtime.last_error,
        }

    @app.post("/worker/generate")
    async def generate(req: GenerateRequest):  # noqa: ANN202
        if "chat" not in runtime.backend.capabilities and req.kind == "chat":
            raise BadRequestError(f"model '{runtime.model_name}' does not support chat", param="model")
        runtime.admit()
        agen = runtime.backend.generate(req)
        try:
            first = await agen.__anext__()
        except StopAsyncIteration:
            runtime.release()
            raise InternalError("the engine produced no output") from None
        except GatewayError as exc:
            runtime.release()
            return error_response(exc)
        except Exception as exc:
            runtime.release()
            runtime.last_error = str(exc)
            log.exception("generation failed")
            raise InternalError(f"generation failed: {type(exc).__name__}") from exc

        if isinstance(first, UsageEvent):
            runtime.tokens_total += first.completion_tokens
        done = False

        async def cleanup() -> None:
            nonlocal done
            if not done:
                done = True
                await agen.aclose()
                runtime.release()

        async def body() -> AsyncIterator[bytes]:
            try:
                yield _line(first)
                async for ev in agen:
                    if isinstance(ev, UsageEvent):
                        runtime.tokens_total += ev.completion_tokens
                    yield _line(ev)
            except GatewayError as exc:
                yield _error_line(exc)
            except Exception as exc:  # noqa: BLE001 - must end the stream with an error event
                runtime.last_error = str(exc)
                log.exception("generation failed mid-stream")
                yield _error_line(InternalError(f"generation failed: {type(exc).__name__}"))
            finally:
                await cleanup()

        return _CleanupStream(body(), cleanup, media_type="application/x-ndjson")

    @app.post("/worker/invoke")
    async def invoke(req: InvokeRequest):  # noqa: ANN202
        if req.capability not in runtime.backend.capabilities:
            raise BadRequestError(f"model '{runtime.model_name}' does not support {req.capability}", param="model")
        runtime.admit()
        released = False

        async def release() -> None:
            nonlocal released
            if not released:
                released = True
                runtime.release()

        try:
            result = await runtime.backend.invoke(req.capability, req.payload)
        except GatewayError:
            await release()
            raise
        except Exception as exc:
            await release()
            runtime.last_error = str(exc)
            log.exception("%s failed", req.capability)
            raise InternalError(f"{req.capability} failed: {type(exc).__name__}") from exc
        if isinstance(result, BinaryResult):
            if isinstance(result.body, bytes):
                await release()
                return Response(result.body, media_type=result.media_type, headers=result.headers)
            return _CleanupStream(result.body, release, media_type=result.media_type, headers=result.headers)
        await release()
        return FastJSONResponse(result)

    return app
