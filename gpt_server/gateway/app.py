"""Build the gateway app: build_app(config, controller)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .. import __version__
from ..chat.grammar_limits import GrammarLimits
from ..config import Config
from ..controller.client import ControllerClient
from ..errors import GatewayError
from ..transport.inproc import InProcessTransport
from ..web.error_handlers import install_error_handlers
from ..web.lifecycle import HangupMiddleware
from ..web.limits import BodyLimitMiddleware
from ..web.responses import FastJSONResponse
from .auth import admin_guard, api_key_guard, is_loopback
from .fastlane import FastLane, GatewayApp, plain_routes
from .files import ImageStore
from .history import History
from .hosts import HostGuardMiddleware, host_guard_needed
from .metrics import Metrics, MetricsMiddleware
from .response_store import ResponseStore
from .routes import route_modules
from .routes.admin import ModelAdmin
from .serving import GenerationService
from .session_store import SessionStore
from .workers import WorkerClient

__all__ = ["build_app"]


def build_app(
    config: Config, controller: ControllerClient, *, local: InProcessTransport | None = None, manager: ModelAdmin | None = None
) -> FastAPI:
    """The gateway; ``local`` reaches the workers ``serve`` runs in this process; ``manager``
    (``serve``'s model manager) answers the admin API's model routes."""
    sa = config.serve_args
    history = History(interval=sa.dashboard_interval)  # the dashboard's charts
    workers = WorkerClient(
        controller, max_retries=sa.max_retries, secret=config.secret(), timeout=sa.request_timeout, local=local,
        verify=config.internal_tls().client_context, history=history,
    )

    image_store = ImageStore(sa.images_dir, sa.images_ttl)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        image_store.start()  # expiry sweep; files are never wiped at start-up
        yield
        image_store.stop()
        await workers.aclose()
        await controller.aclose()

    app = GatewayApp(
        title="GPT Server",
        version=__version__,
        description="OpenAI-compatible API over self-hosted models.",
        lifespan=lifespan,
        default_response_class=FastJSONResponse,
    )
    app.state.config = config
    app.state.controller = controller
    app.state.manager = manager
    app.state.workers = workers
    app.state.image_store = image_store
    metrics = Metrics(history)
    app.state.metrics = metrics
    app.state.history = history
    limits = GrammarLimits(max_bytes=sa.max_grammar_bytes, max_depth=sa.max_grammar_depth)
    app.state.generation = GenerationService(workers, timeout=sa.request_timeout, metrics=metrics, grammar_limits=limits)
    app.state.responses = ResponseStore(sa.responses_max_stored, sa.responses_max_stored_bytes, sa.responses_ttl)
    app.state.sessions = SessionStore(sa.sessions_max, sa.sessions_max_bytes, sa.sessions_max_session_bytes, sa.sessions_max_turns, sa.sessions_ttl)
    install_error_handlers(app)

    guard = api_key_guard(sa.api_keys)
    v1 = APIRouter(dependencies=[Depends(guard)])
    admin = APIRouter(dependencies=[Depends(admin_guard(sa.admin_keys, open_without_keys=not sa.api_keys and is_loopback(sa.host)))])
    plain: dict = {}
    for mod in route_modules():
        if hasattr(mod, "router"):
            v1.include_router(mod.router)
            plain.update(plain_routes(mod.router.routes))
        if hasattr(mod, "public_router"):
            app.include_router(mod.public_router)
        if hasattr(mod, "admin_router"):
            admin.include_router(mod.admin_router)
    app.include_router(v1)
    app.include_router(admin)

    @app.get("/health", include_in_schema=False)
    async def health(request: Request) -> FastJSONResponse:
        ready = await request.app.state.controller.models()
        if ready:
            return FastJSONResponse({"status": "ok", "models": len(ready)})
        return FastJSONResponse({"status": "unavailable", "models": 0}, status_code=503)

    @app.get("/metrics", include_in_schema=False, dependencies=[Depends(api_key_guard(sa.api_keys))])
    async def prometheus_metrics(request: Request) -> Response:
        try:
            workers = await request.app.state.controller.workers()
        except GatewayError:
            workers = []
        return Response(metrics.render(workers), media_type=CONTENT_TYPE_LATEST)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root(request: Request) -> Response:
        """A browser (it accepts HTML) goes to the API docs; any other client gets Ollama's
        liveness answer, which Ollama clients probe before they talk to a server."""
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/docs")
        return Response("Ollama is running", media_type="text/plain; charset=utf-8")

    app.add_middleware(FastLane, routes=plain, guard=guard)  # inside the body limit
    app.add_middleware(BodyLimitMiddleware, limit=sa.max_body_bytes, json_limit=sa.max_json_body_bytes)
    app.add_middleware(HangupMiddleware)  # a client gone before its answer stops the work behind it
    if sa.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=sa.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    if host_guard_needed(sa.host, sa.allowed_hosts):
        app.add_middleware(HostGuardMiddleware, bind_host=sa.host, allowed=sa.allowed_hosts)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.fast_paths = frozenset(plain)
    return app
