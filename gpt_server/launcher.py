"""`gpt-server serve`: controller + gateway in this process, one process per worker replica
(or, for replicas with ``in_process: true``, the worker app in this process too)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .config import Config, ConfigError
from .controller.app import build_controller_app
from .controller.client import LocalController, RemoteController
from .controller.dispatch import make_policy
from .controller.registry import Registry
from .gateway.app import build_app
from .procs import die_with_parent
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
from .worker.app import DEFAULT_MAX_BODY_BYTES, build_worker_app
from .worker.generation import Generation
from .worker.main import backend_available, build_runtime, worker_body_limit
from .worker.runtime import RegistryLink, WorkerRuntime

if TYPE_CHECKING:
    from .cluster.ray import RayReplicaSet

__all__ = ["serve", "run_controller", "run_gateway", "WorkerProcess"]

log = logging.getLogger("gpt_server.launcher")


@dataclass
class WorkerProcess:
    model: str
    replica: int
    args: list[str]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.model}#{self.replica}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gpt_server.cli", *self.args, env=self.env, preexec_fn=die_with_parent
        )
        self.started_at = time.monotonic()
        log.info("started worker %s (pid %d)", self.label, self.proc.pid)

    async def stop(self, timeout: float = 15.0) -> None:
        p = self.proc
        if p is None or p.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
        try:
            await asyncio.wait_for(p.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()


class Supervisor:
    """Starts worker processes, restarts crashed ones with backoff, stops them all."""

    def __init__(self, workers: list[WorkerProcess]) -> None:
        self.workers = workers
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for w in self.workers:
            await w.start()
            self._tasks.append(asyncio.create_task(self._watch(w)))

    async def _watch(self, w: WorkerProcess) -> None:
        backoff = 1.0
        while not self.stopping:
            assert w.proc is not None
            code = await w.proc.wait()
            if self.stopping:
                return
            ran = time.monotonic() - w.started_at
            if ran > 60:
                backoff = 1.0
            log.error("worker %s exited with code %s after %.1fs; restarting in %.0fs", w.label, code, ran, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            if self.stopping:
                return
            await w.start()

    async def stop(self) -> None:
        self.stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)


def _thread_shares(cfg: Config) -> tuple[int, int]:
    """CPU threads per chat-engine replica and per other CPU replica."""
    entries = cfg.enabled_models()
    cores = os.cpu_count() or 1
    cpu_workers = sum(1 for e in entries for w in e.workers if not w.gpus)
    llm_workers = sum(1 for e in entries if e.kind == "auto" for w in e.workers if not w.gpus)
    # chat engines are the CPU-hungry ones: they share all cores; other kinds get an even share
    return max(1, cores // max(llm_workers, 1)), max(1, cores // max(cpu_workers, 1))


def _worker_processes(cfg: Config, config_path: str, controller_address: str, secret: str) -> list[WorkerProcess]:
    """One process per replica; the internal secret travels in the environment (never argv)."""
    llm_threads, other_threads = _thread_shares(cfg)
    out = []
    for e in cfg.enabled_models():
        for i, w in enumerate(e.workers):
            if w.in_process:
                continue
            env = {**os.environ, SECRET_ENV: secret}
            if w.gpus:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in w.gpus)
            else:
                threads = llm_threads if e.kind == "auto" else other_threads
                env.setdefault("GPT_SERVER_THREADS", str(threads))
                env.setdefault("OMP_NUM_THREADS", str(threads))
            args = ["worker", "-c", config_path, "--model", e.name, "--replica", str(i), "--controller-address", controller_address]
            out.append(WorkerProcess(model=e.name, replica=i, args=args, env=env))
    return out


@dataclass
class LocalWorker:
    """A replica with ``in_process: true``: its worker app runs in this process."""

    model: str
    replica: int
    runtime: WorkerRuntime
    transport: InProcessTransport
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    task: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        return f"{self.model}#{self.replica} (in process)"

    async def start(self) -> None:
        runtime = self.runtime
        self.transport.register(runtime.address, build_worker_app(runtime, max_body_bytes=self.max_body_bytes), lambda req: Generation.start(runtime, req))
        self.task = asyncio.create_task(self._load())

    async def _load(self) -> None:
        try:
            await self.runtime.start()
        except Exception:
            self.runtime.state = "failed"
            log.exception("in-process worker %s failed to load; it is not served", self.label)

    async def stop(self) -> None:
        self.transport.unregister(self.runtime.address)
        if self.task is None:  # never started
            return
        if not self.task.done():  # still loading: nothing to drain
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            return
        if self.runtime.state != "failed":
            await self.runtime.stop()


def _local_workers(cfg: Config, registry: Registry, transport: InProcessTransport) -> list[LocalWorker]:
    llm_threads, other_threads = _thread_shares(cfg)
    fixed = os.environ.get("GPT_SERVER_THREADS")  # as for worker processes, the environment wins
    # the gateway of this process dispatches from this registry: call it directly, no HTTP
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
            out.append(
                LocalWorker(model=e.name, replica=i, runtime=runtime, transport=transport, max_body_bytes=worker_body_limit(cfg))
            )
    return out


async def _wait_ready(registry: Registry, workers: list[WorkerProcess | LocalWorker], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_log = 0.0
    while True:
        registered = {(r.info.model_name, r.info.replica) for r in registry.workers.values()}
        waiting = [
            w for w in workers
            if (w.model, w.replica) not in registered and not (isinstance(w, LocalWorker) and w.runtime.state == "failed")
        ]
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


def _ray_threads(cfg: Config) -> dict[str, int]:
    """CPU threads (= Ray ``num_cpus``) per replica of each model on a Ray cluster: the model's
    ``ray_options.num_cpus``, else its ``n_threads``, else 1 (nodes differ: no share of this host)."""
    out = {}
    for e in cfg.enabled_models():
        n = e.ray_options.get("num_cpus") or getattr(e.model_config_, "n_threads", None) or 1
        out[e.name] = max(1, int(n))
    return out


async def serve(cfg: Config, config_data: dict | None, ray_address: str | None = None) -> None:
    """Run controller + gateway here and every worker replica as a child process."""
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
    local = _local_workers(cfg, registry, transport)  # before anything that needs cleaning up
    # workers read the same validated settings from a private file
    fd, cfg_path = tempfile.mkstemp(prefix="gpt-server-", suffix=".json")
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps(config_data or {}))
    cserver = make_server(build_controller_app(registry, secret=secret), csock, tls=tls)
    gserver = make_server(build_app(cfg, LocalController(registry), local=transport), gsock, graceful=sa.shutdown_timeout)
    stop = asyncio.Event()
    _install_stop(stop)
    tasks = [
        asyncio.create_task(cserver.serve(sockets=[csock])),
        asyncio.create_task(gserver.serve(sockets=[gsock])),
    ]
    sup: Supervisor | RayReplicaSet
    if cfg.cluster.backend == "ray":  # replicas as Ray actors (cluster/ray.py); Ray restarts them
        try:
            from .cluster.ray import RayReplicaSet
        except ImportError as exc:
            raise ConfigError(f"cluster.backend: ray needs Ray (pip install gpt-server[ray]): {exc}") from exc
        sup = RayReplicaSet(cfg, config_data, controller_address, secret, _ray_threads(cfg), address=ray_address)
        workers: list[Any] = sup.workers
    else:
        workers = _worker_processes(cfg, cfg_path, controller_address, secret)
        sup = Supervisor(workers)
    try:
        for lw in local:
            await lw.start()
        await sup.start()
        ready = asyncio.create_task(_wait_ready(registry, [*workers, *local], cfg.model_worker_args.startup_timeout))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            host, port = gsock.getsockname()[:2]
            names = sorted({n for e in cfg.enabled_models() for n in e.names})
            log.info("GPT Server ready on http://%s:%d/v1 serving %s", host, port, ", ".join(names))
        await stopper
    finally:
        log.info("shutting down: draining in-flight requests (up to %.0fs)", sa.shutdown_timeout)
        gserver.should_exit = True
        await asyncio.gather(tasks[1], return_exceptions=True)  # the gateway drains first
        await sup.stop()
        await asyncio.gather(*(lw.stop() for lw in local), return_exceptions=True)
        cserver.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(OSError):
            os.unlink(cfg_path)


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
    await server.serve(sockets=[sock])
