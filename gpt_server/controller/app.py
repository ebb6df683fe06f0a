"""The controller's HTTP face: internal routes for workers and remote gateways."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, ValidationError

from ..errors import AuthenticationError, BadRequestError, ConflictError
from ..protocol.worker import (
    PROTOCOL_VERSION,
    SECRET_HEADER,
    DispatchReply,
    DispatchRequest,
    Heartbeat,
    HeartbeatReply,
    ModelEntryInfo,
    WorkerInfo,
    WorkerView,
    secret_matches,
)
from ..web.error_handlers import install_error_handlers, validation_message
from .registry import Registry

__all__ = ["build_controller_app", "expiry_loop", "secret_guard"]


class _WorkerRef(BaseModel):
    worker_id: str


def secret_guard(secret: str | None) -> Callable[[Request], Awaitable[None]]:
    async def check(request: Request) -> None:
        if not secret:
            return
        if not secret_matches(request.headers.get(SECRET_HEADER, ""), secret):
            raise AuthenticationError("missing or wrong internal secret", code="invalid_secret")

    return check


async def expiry_loop(registry: Registry, period: float = 1.0) -> None:
    while True:
        await asyncio.sleep(period)
        registry.expire()


def build_controller_app(registry: Registry, *, secret: str | None = None, run_expiry: bool = True) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(expiry_loop(registry)) if run_expiry else None
        yield
        if task:
            task.cancel()

    # /docs, /redoc and /openapi.json bypass route dependencies: behind a secret, there are none
    docs: dict[str, Any] = {"docs_url": None, "redoc_url": None, "openapi_url": None} if secret else {}
    app = FastAPI(title="GPT Server controller", lifespan=lifespan, dependencies=[Depends(secret_guard(secret))], **docs)
    app.state.registry = registry
    install_error_handlers(app)

    @app.post("/controller/register")
    async def register(request: Request) -> dict[str, bool]:
        body = await request.body()
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequestError("the request body is not valid JSON") from None
        # the version first: a worker of another release may not fit today's WorkerInfo at all
        version = raw.get("protocol_version", 1) if isinstance(raw, dict) else None
        if version != PROTOCOL_VERSION:
            raise ConflictError(
                f"worker speaks internal protocol version {version}, this controller version {PROTOCOL_VERSION}: "
                "run the same gpt-server release on every host",
                param="protocol_version",
                code="protocol_version_mismatch",
            )
        try:
            info = WorkerInfo.model_validate(raw)
        except ValidationError as exc:
            message, param = validation_message(list(exc.errors()))
            raise BadRequestError(message, param=param) from None
        registry.register(info)
        return {"ok": True}

    @app.post("/controller/heartbeat")
    async def heartbeat(hb: Heartbeat) -> HeartbeatReply:
        return HeartbeatReply(known=registry.heartbeat(hb))

    @app.post("/controller/unregister")
    async def unregister(ref: _WorkerRef) -> dict[str, bool]:
        return {"ok": registry.unregister(ref.worker_id)}

    @app.post("/controller/report_failure")
    async def report_failure(ref: _WorkerRef) -> dict[str, bool]:
        registry.report_failure(ref.worker_id)
        return {"ok": True}

    @app.post("/controller/dispatch")
    async def dispatch(req: DispatchRequest) -> DispatchReply:
        return registry.dispatch_or_raise(req.model, req.exclude, req.capability, affinity=req.affinity)

    @app.get("/controller/models")
    async def models() -> list[ModelEntryInfo]:
        return registry.models()

    @app.get("/controller/workers")
    async def workers() -> list[WorkerView]:
        return [r.view() for r in registry.workers.values()]

    @app.get("/controller/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "workers": len(registry.workers)}

    return app

