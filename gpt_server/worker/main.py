"""Run one worker process: load a backend, serve the worker routes, register."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

import uvicorn

from ..backends.base import BackendSpec
from ..backends.registry import engine
from ..config import Config, ConfigError, ModelEntry, resolve_model_path
from ..errors import BadRequestError, PayloadTooLargeError
from ..transport.direct import HandoffServer
from ..transport.lane import LaneServer
from ..web.internal import connect_host, require_secret_off_loopback
from ..web.serve import bind_socket, make_server
from .app import build_worker_app, lane_handler, lane_secret_check, lane_streams
from .runtime import ControllerLink, WorkerRuntime, advertise_host

__all__ = ["run_worker", "build_runtime", "backend_available", "worker_body_limit", "WORKER_ID_ENV"]

WORKER_ID_ENV = "GPT_SERVER_WORKER_ID"

log = logging.getLogger(__name__)


def backend_available(entry: ModelEntry) -> None:
    """What can be checked before a worker starts, on this host: the engine is in this build,
    a local model path exists, the engine's own checks (its interpreter …). A ``ConfigError``
    names the key; ``serve`` stops with exit code 2 before starting anything."""
    from ..backends.registry import engines

    known = engines()
    if entry.work_mode not in known or not known[entry.work_mode].available():
        ready = sorted(n for n, e in known.items() if e.available())
        raise ConfigError(
            f"models.{entry.name}.work_mode: engine '{entry.work_mode}' is not available in this build "
            f"(available: {', '.join(ready)})"
        )
    path = resolve_model_path(entry.model_config_.model_name_or_path)
    if path.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(path)):
        raise ConfigError(f"models.{entry.name}.model_config.model_name_or_path: '{path}' does not exist")
    check = known[entry.work_mode].preflight
    if check is not None:
        check(entry)


def build_runtime(
    cfg: Config,
    entry: ModelEntry,
    *,
    replica: int,
    address: str,
    controller_address: str | None,
    n_threads: int | None,
    controller: ControllerLink | None = None,
    worker_id: str | None = None,
) -> WorkerRuntime:
    """The backend (not loaded yet) and the runtime around it, for one replica."""
    backend_available(entry)
    mwa = cfg.model_worker_args
    gpus = (entry.workers[replica].gpus if replica < len(entry.workers) else None) or []
    spec = BackendSpec(
        entry=entry,
        model_path=resolve_model_path(entry.model_config_.model_name_or_path),
        gpus=gpus,
        n_threads=n_threads,
    )
    backend = engine(entry.work_mode or "").load()(spec)
    return WorkerRuntime(
        backend,
        model_name=entry.name,
        aliases=[*entry.alias, *getattr(backend, "extra_model_names", [])],  # e.g. LoRA adapters
        model_kind=entry.kind,
        address=address,
        controller_address=controller_address,
        limit=mwa.limit_worker_concurrency,
        heartbeat_interval=mwa.heartbeat_interval,
        secret=cfg.secret(),
        replica=replica,
        controller=controller,
        verify=cfg.internal_tls().client_context,
        default=entry.default,
        engine=entry.work_mode or "",
        worker_id=worker_id,
    )


def worker_body_limit(cfg: Config) -> int:
    """The largest body a worker reads: twice the gateway's (what it forwards can be base64)."""
    return 2 * cfg.serve_args.max_body_bytes


async def run_worker(
    cfg: Config,
    entry: ModelEntry,
    *,
    replica: int = 0,
    host: str | None = None,
    port: int | None = None,
    controller_address: str | None = None,
    advertise: str | None = None,
) -> None:
    backend_available(entry)
    mwa = cfg.model_worker_args
    bind_host = host or mwa.host
    require_secret_off_loopback("gpt-server worker", bind_host, cfg.secret())
    tls = cfg.internal_tls()
    gpus = (entry.workers[replica].gpus if replica < len(entry.workers) else None) or []
    if gpus and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    threads = os.environ.get("GPT_SERVER_THREADS")
    first = entry.port or mwa.port  # the model's own port (gpt_server's per-model port), else the workers' first
    sock = bind_socket(bind_host, port if port is not None else (first + replica if first else 0))
    real_port = sock.getsockname()[1]
    ctrl = controller_address or mwa.controller_address or tls.url(connect_host(cfg.controller_args.host), cfg.controller_args.port)
    adv = advertise_host(bind_host, ctrl, advertise or mwa.advertise_host)
    runtime = build_runtime(
        cfg, entry, replica=replica, address=tls.url(adv, real_port),
        controller_address=ctrl, n_threads=int(threads) if threads else None,
        worker_id=os.environ.get(WORKER_ID_ENV) or None,  # set by the launcher that follows this replica
    )
    if mwa.direct_streams:  # a gateway on this host may hand it client connections (transport.direct)
        runtime.handoff = HandoffServer()
        runtime.handoff.start()
    if mwa.invoke_socket and hasattr(socket, "SO_PEERCRED"):  # JSON calls from a gateway on this host (transport.lane)
        runtime.lane = LaneServer(
            lane_handler(runtime), secret_ok=lane_secret_check(runtime.secret), max_frame=worker_body_limit(cfg),
            too_large=lambda n: PayloadTooLargeError(f"the call's body is over {n} bytes").to_json(),
            streams=lane_streams(runtime),
            unknown_call=lambda kind: BadRequestError(f"unknown call kind {kind}").to_json(),
        )
        await runtime.lane.start()
    server = make_server(build_worker_app(runtime, max_body_bytes=worker_body_limit(cfg)), sock, tls=tls)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        # leave the controller's list first (and say "draining"), then let uvicorn drain
        if not stopping:
            stopping.append(loop.create_task(_drain_then_exit(runtime, server)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    log.info("worker %s#%d listening on %s (advertised %s)", entry.name, replica, real_port, runtime.address)
    try:
        await server.serve(sockets=[sock])
    except SystemExit:  # uvicorn's exit when the lifespan (the model's load) failed
        err = runtime.config_error
        if err is not None:  # named from the model down, whoever raised it
            msg = str(err)
            raise ConfigError(msg if msg.startswith("models.") else f"models.{entry.name}.{msg}") from None
        raise
    finally:
        if runtime.handoff is not None:
            runtime.handoff.close()
        if runtime.lane is not None:
            runtime.lane.close()


async def _drain_then_exit(runtime: WorkerRuntime, server: uvicorn.Server) -> None:
    try:
        await runtime.drain()
    finally:
        server.should_exit = True
