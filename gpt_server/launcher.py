"""`gpt-server serve`: controller + gateway in this process, one process per worker replica
(or, for replicas with ``in_process: true``, the worker app in this process too). The
replicas belong to a ``runtime.manager.ModelManager``: the admin API, SIGHUP and on_demand
models load, unload, scale and replace them while the server runs."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable

import orjson

from .config import Config, ConfigError, ModelEntry
from .controller.app import build_controller_app
from .controller.client import LocalController, RemoteController
from .controller.dispatch import make_policy
from .controller.registry import Registry
from .errors import GatewayError
from .gateway.app import build_app
from .procs import settle_heap
from .runtime.manager import ModelManager, ReplicaFactory
from .runtime.memory import default_budget
from .runtime.ondemand import OnDemandController
from .runtime.replica import InProcessReplica, ProcessReplica, Replica
from .runtime.worker_calls import WorkerCaller
from .transport.inproc import SCHEME, InProcessTransport
from .web.internal import (
    SECRET_ENV,
    SECRET_SETTING,
    connect_host,
    is_loopback,
    new_secret,
    require_secret_off_loopback,
)
from .web.serve import bind_socket, make_server
from .worker.main import WORKER_ID_ENV, backend_available, build_runtime, worker_body_limit
from .worker.runtime import RegistryLink

__all__ = ["serve", "run_controller", "run_gateway", "LocalReplicas", "LocalWorker"]

log = logging.getLogger("gpt_server.launcher")


def _thread_shares(cfg: Config) -> tuple[int, int]:
    """CPU threads per chat-engine replica and per other CPU replica."""
    entries = cfg.enabled_models()
    cores = os.cpu_count() or 1
    cpu_workers = sum(1 for e in entries for w in e.workers if not w.gpus)
    llm_workers = sum(1 for e in entries if e.kind == "auto" for w in e.workers if not w.gpus)
    # chat engines are the CPU-hungry ones: they share all cores; other kinds get an even share
    return max(1, cores // max(llm_workers, 1)), max(1, cores // max(cpu_workers, 1))


class LocalReplicas:
    """The ``ReplicaFactory`` of ``serve``: a worker process per replica, or the worker app in
    this process for ``in_process: true``. Each process reads its own private config file (the
    settings of this start and its one model entry)."""

    def __init__(
        self, base: dict, controller_address: str, secret: str, registry: Registry, transport: InProcessTransport, workdir: str
    ) -> None:
        self.base = {k: v for k, v in base.items() if k != "models"}
        self.controller_address = controller_address
        self.secret = secret
        self.link = RegistryLink(registry)  # in-process replicas register directly, no HTTP
        self.transport = transport
        self.workdir = workdir
        self.on_fatal: Callable[[str], None] | None = None  # told when a replica's config cannot load

    def __call__(self, cfg: Config, entry: ModelEntry, raw: dict, index: int, worker_id: str) -> Replica:
        spec = entry.workers[min(index, len(entry.workers) - 1)]  # replicas beyond the list: as the last one
        llm_threads, other_threads = _thread_shares(cfg)
        threads = llm_threads if entry.kind == "auto" else other_threads
        if spec.in_process:
            fixed = os.environ.get("GPT_SERVER_THREADS")  # as for worker processes, the environment wins
            runtime = build_runtime(
                cfg, entry, replica=index, address=f"{SCHEME}{os.getpid()}/{entry.name}-{index}", controller_address=None,  # index: unique among live replicas
                n_threads=int(fixed) if fixed else threads, controller=self.link, worker_id=worker_id,
            )
            return InProcessReplica(
                entry.name, index, runtime, self.transport, max_body_bytes=worker_body_limit(cfg), on_fatal=self.on_fatal
            )
        env = {**os.environ, SECRET_ENV: self.secret, WORKER_ID_ENV: worker_id}
        if cfg.model_worker_args.log_level:
            env.setdefault("GPT_SERVER_LOG_LEVEL", cfg.model_worker_args.log_level)
        if spec.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in spec.gpus)
        else:
            env.setdefault("GPT_SERVER_THREADS", str(threads))
            env.setdefault("OMP_NUM_THREADS", str(threads))
        workers = list(raw.get("workers") or [{}])
        workers += [workers[-1]] * (index + 1 - len(workers))
        path = os.path.join(self.workdir, f"{worker_id}.json")
        with open(path, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(orjson.dumps({**self.base, "models": [{entry.name: {**raw, "workers": workers}}]}))
        args = ["worker", "-c", path, "--model", entry.name, "--replica", str(index), "--controller-address", self.controller_address]
        return ProcessReplica(model=entry.name, replica=index, worker_id=worker_id, args=args, env=env, on_fatal=self.on_fatal)


# the in-process replica (older name)
LocalWorker = InProcessReplica


def _local_workers(cfg: Config, registry: Registry, transport: InProcessTransport) -> list[InProcessReplica]:
    """The ``in_process`` replicas of ``cfg``, built and not started (tests drive them directly)."""
    llm_threads, other_threads = _thread_shares(cfg)
    fixed = os.environ.get("GPT_SERVER_THREADS")
    link = RegistryLink(registry)
    out = []
    for e in cfg.enabled_models():
        for i, w in enumerate(e.workers):
            if not w.in_process:
                continue
            runtime = build_runtime(  # the pid keeps addresses apart across serve processes
                cfg, e, replica=i, address=f"{SCHEME}{os.getpid()}/{e.name}-{i}", controller_address=None,
                n_threads=int(fixed) if fixed else (llm_threads if e.kind == "auto" else other_threads),
                controller=link,
            )
            out.append(InProcessReplica(e.name, i, runtime, transport, max_body_bytes=worker_body_limit(cfg)))
    return out


async def _wait_ready(manager: ModelManager, replicas: list[Replica], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_log = 0.0
    while True:
        waiting = [r for r in replicas if not manager.ready(r) and not (r.failure is not None and not r.alive and getattr(r, "final", True))]
        if not waiting:
            return
        now = loop.time()
        if now > deadline:
            log.error("workers not ready after %.0fs: %s", timeout, ", ".join(w.label for w in waiting))
            return
        if now - last_log > 5:
            log.info("waiting for %d worker(s) to load: %s", len(waiting), ", ".join(w.label for w in waiting))
            last_log = now
        await asyncio.sleep(0.1)


def _install_stop(event: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)


async def serve(cfg: Config, config_data: dict | None, config_path: str | None = None) -> None:
    """Run controller + gateway here and every worker replica as a child process (or in this
    process). ``config_path``: the file ``POST /admin/reload`` and SIGHUP read again."""
    for e in cfg.enabled_models():
        backend_available(e)
    # every internal route is behind a secret: the configured one, else one made for this start,
    # known only to this process and (through the environment) its worker processes
    configured = cfg.secret()
    secret = configured or new_secret()
    cfg = cfg.with_secret(secret)
    if not configured and not is_loopback(cfg.controller_args.host):
        log.info(
            "the controller listens on %s behind a secret made for this start: workers on other hosts cannot "
            "register until %s is set", cfg.controller_args.host, SECRET_SETTING,
        )
    tls = cfg.internal_tls()
    ca, sa = cfg.controller_args, cfg.serve_args
    registry = Registry(make_policy(ca.dispatch_method))
    csock = bind_socket(ca.host, ca.port)
    gsock = bind_socket(sa.host, sa.port)
    controller_address = cfg.model_worker_args.controller_address or tls.url(connect_host(ca.host), csock.getsockname()[1])
    transport = InProcessTransport()
    # worker processes read the validated settings from private files here
    workdir = tempfile.mkdtemp(prefix="gpt-server-")
    data = config_data or {}
    local = LocalReplicas(data, controller_address, secret, registry, transport, workdir)
    factory: ReplicaFactory = local
    if cfg.cluster.backend == "ray":  # replicas as Ray actors (cluster/ray.py); Ray restarts and re-places them
        try:
            from .cluster.ray import RayReplicas, connect_cluster
        except ImportError as exc:
            raise ConfigError(f"cluster.backend: ray needs Ray (pip install gpt-server[ray]): {exc}") from exc
        try:
            cluster = await connect_cluster(cfg, cfg.cluster.address)
        except Exception as exc:
            raise ConfigError(f"cluster.address: cannot join the Ray cluster at {cfg.cluster.address!r}: {exc}") from exc
        factory = RayReplicas(data, controller_address, secret, cluster)
    budget = sa.memory_budget if sa.memory_budget is not None else default_budget()
    manager = ModelManager(
        cfg, data, registry, factory, config_path=config_path, memory_budget=budget, drain_timeout=sa.shutdown_timeout,
        worker_calls=WorkerCaller(secret, local=transport, verify=tls.client_context),
    )
    cserver = make_server(build_controller_app(registry, secret=secret), csock, tls=tls)
    controller = OnDemandController(LocalController(registry), manager)
    gserver = make_server(build_app(cfg, controller, local=transport, manager=manager), gsock, graceful=sa.shutdown_timeout)
    stop = asyncio.Event()
    _install_stop(stop)
    _install_reload(manager)
    fatal: list[str] = []
    starting = True

    def on_fatal(why: str) -> None:
        """A replica's config cannot load: while starting, serve stops (exit 2); later (an admin
        load, a reload) the replica stays failed with the reason and the rest keeps serving."""
        if starting:
            fatal.append(why)
            stop.set()

    local.on_fatal = on_fatal
    tasks = [
        asyncio.create_task(cserver.serve(sockets=[csock])),
        asyncio.create_task(gserver.serve(sockets=[gsock])),
    ]
    # what start-up made (the apps, modules) is frozen out of the collector's passes; replicas
    # loaded in this process later are not, so unloading one frees it
    settle_heap()
    try:
        started = await manager.start()
        ready = asyncio.create_task(_wait_ready(manager, started, cfg.model_worker_args.startup_timeout))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopper}, return_when=asyncio.FIRST_COMPLETED)
        became_ready = ready.done() and not ready.cancelled()
        ready.cancel()
        starting = False
        if became_ready and not fatal:
            host, port = gsock.getsockname()[:2]
            names = sorted({n for e in cfg.enabled_models() for n in e.names})
            log.info("GPT Server ready on http://%s:%d/v1 serving %s", host, port, ", ".join(names))
        await stopper
    finally:
        log.info("shutting down: draining in-flight requests (up to %.0fs)", sa.shutdown_timeout)
        gserver.should_exit = True
        await asyncio.gather(tasks[1], return_exceptions=True)  # the gateway drains first
        await manager.aclose()
        cserver.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        shutil.rmtree(workdir, ignore_errors=True)
    if fatal:
        raise ConfigError(fatal[0])


def _install_reload(manager: ModelManager) -> None:
    """SIGHUP: reload the config file (as ``POST /admin/reload``); a bad file changes nothing."""
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Task[None]] = []

    async def reload() -> None:
        try:
            await manager.reload()
        except GatewayError as exc:
            log.error("SIGHUP: config not reloaded, nothing changed: %s", exc.message)
        except Exception:
            log.exception("SIGHUP: reload failed")

    def on_hup() -> None:
        pending[:] = [t for t in pending if not t.done()]
        pending.append(loop.create_task(reload()))

    loop.add_signal_handler(signal.SIGHUP, on_hup)


async def run_controller(cfg: Config) -> None:
    ca = cfg.controller_args
    require_secret_off_loopback("gpt-server controller", ca.host, cfg.secret())
    registry = Registry(make_policy(ca.dispatch_method))
    sock = bind_socket(ca.host, ca.port)
    server = make_server(build_controller_app(registry, secret=cfg.secret()), sock, tls=cfg.internal_tls())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    log.info("controller listening on %s:%d (%s)", ca.host, sock.getsockname()[1], ca.dispatch_method)
    settle_heap()
    await server.serve(sockets=[sock])


async def run_gateway(cfg: Config, controller_address: str) -> None:
    sa = cfg.serve_args
    sock = bind_socket(sa.host, sa.port)
    server = make_server(
        build_app(
            cfg,
            RemoteController(
                controller_address, secret=cfg.secret(), dispatch_method=cfg.controller_args.dispatch_method,
                verify=cfg.internal_tls().client_context,
            ),
        ), sock, graceful=sa.shutdown_timeout
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    log.info("gateway listening on %s:%d, controller %s", sa.host, sock.getsockname()[1], controller_address)
    settle_heap()
    await server.serve(sockets=[sock])
