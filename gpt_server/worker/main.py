"""Run one worker process: load a backend, serve the worker routes, register."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from ..backends.base import BackendSpec
from ..backends.registry import engine
from ..config import Config, ConfigError, ModelEntry, resolve_model_path
from ..web.serve import bind_socket, make_server
from .app import build_worker_app
from .runtime import ControllerLink, WorkerRuntime, advertise_host

__all__ = ["run_worker", "build_runtime", "backend_available"]

log = logging.getLogger(__name__)


def backend_available(entry: ModelEntry) -> None:
    from ..backends.registry import engines

    known = engines()
    if entry.work_mode not in known or not known[entry.work_mode].available():
        ready = sorted(n for n, e in known.items() if e.available())
        raise ConfigError(
            f"models.{entry.name}.work_mode: engine '{entry.work_mode}' is not available in this build "
            f"(available: {', '.join(ready)})"
        )


def build_runtime(
    cfg: Config,
    entry: ModelEntry,
    *,
    replica: int,
    address: str,
    controller_address: str | None,
    n_threads: int | None,
    controller: ControllerLink | None = None,
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
        default=entry.default,
    )


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
    gpus = (entry.workers[replica].gpus if replica < len(entry.workers) else None) or []
    if gpus and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    threads = os.environ.get("GPT_SERVER_THREADS")
    bind_host = host or mwa.host
    sock = bind_socket(bind_host, port if port is not None else (mwa.port + replica if mwa.port else 0))
    real_port = sock.getsockname()[1]
    ctrl = controller_address or mwa.controller_address or (
        f"http://{_connect_host(cfg.controller_args.host)}:{cfg.controller_args.port}"
    )
    adv = advertise_host(bind_host, ctrl, advertise or mwa.advertise_host)
    runtime = build_runtime(
        cfg, entry, replica=replica, address=f"http://{_url_host(adv)}:{real_port}",
        controller_address=ctrl, n_threads=int(threads) if threads else None,
    )
    server = make_server(build_worker_app(runtime), sock)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    log.info("worker %s#%d listening on %s (advertised %s)", entry.name, replica, real_port, runtime.address)
    await server.serve(sockets=[sock])


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
