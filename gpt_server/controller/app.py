"""The controller's HTTP face: internal routes for workers and remote gateways."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

from ..errors import AuthenticationError
from ..protocol.worker import (
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
from ..server_common import install_error_handlers
from .registry import Registry

__all__ = ["build_controller_app", "expiry_loop", "secret_guard"]


class _WorkerRef(BaseModel):
    worker_id: str


def secret_guard(secret: str | None):  # noqa: ANN201 - FastAPI dependency
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

    app = FastAPI(title="GPT Server controller", lifespan=lifespan, dependencies=[Depends(secret_guard(secret))])
    app.state.registry = registry
    install_error_handlers(app)

    @app.post("/controller/register")
    async def register(info: WorkerInfo) -> dict:
        registry.register(info)
        return {"ok": True}

    @app.post("/controller/heartbeat")
    async def heartbeat(hb: Heartbeat) -> HeartbeatReply:
        return HeartbeatReply(known=registry.heartbeat(hb))

    @app.post("/controller/unregister")
    async def unregister(ref: _WorkerRef) -> dict:
        return {"ok": registry.unregister(ref.worker_id)}

    @app.post("/controller/report_failure")
    async def report_failure(ref: _WorkerRef) -> dict:
        registry.report_failure(ref.worker_id)
        return {"ok": True}

    @app.post("/controller/dispatch")
    async def dispatch(req: DispatchRequest) -> DispatchReply:
        return registry.dispatch_or_raise(req.model, req.exclude, req.capability)

    @app.get("/controller/models")
    async def models() -> list[ModelEntryInfo]:
        return registry.models()

    @app.get("/controller/workers")
    async def workers() -> list[WorkerView]:
        return [r.view() for r in registry.workers.values()]

    @app.get("/controller/health")
    async def health() -> dict:
        return {"status": "ok", "workers": len(registry.workers)}

    return app

