"""One replica of one model, as the model manager starts and stops it.

``Replica`` is the seam between the manager and where replicas run: a local process
(``ProcessReplica``), the gateway's own process (``InProcessReplica``), or another placement
(a Ray actor) implementing the same four members. A replica names itself in the registry with
``worker_id`` (the manager chooses it), so the manager can tell when it is ready and drain it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..config import ConfigError
from ..procs import CONFIG_ERROR_EXIT, die_with_parent
from ..transport.inproc import InProcessTransport
from ..worker.app import DEFAULT_MAX_BODY_BYTES, build_worker_app
from ..worker.generation import Generation
from ..worker.runtime import WorkerRuntime

__all__ = ["Replica", "ProcessReplica", "InProcessReplica"]

log = logging.getLogger("gpt_server.launcher")


class Replica(Protocol):
    """Start, stop, and say whether it runs. ``stop(drain)``: the requests in flight get up to
    ``drain`` seconds (the manager has already taken the replica out of dispatch)."""

    @property
    def model(self) -> str: ...

    @property
    def replica(self) -> int: ...

    @property
    def worker_id(self) -> str: ...

    @property
    def label(self) -> str: ...

    @property
    def alive(self) -> bool: ...

    @property
    def failure(self) -> str | None:
        """Why it is not running (the last exit, a load error) while it is down; else None."""
        ...

    async def start(self) -> None: ...

    async def stop(self, drain: float = 15.0) -> None: ...


@dataclass
class ProcessReplica:
    """A worker process, restarted with backoff when it exits on its own."""

    model: str
    replica: int
    worker_id: str
    args: list[str]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    failure: str | None = None
    stopping: bool = False
    # a worker that exits with CONFIG_ERROR_EXIT (its model cannot load because of its config)
    # is not restarted: ``on_fatal`` hears why (serve, while starting, stops with exit code 2)
    on_fatal: Callable[[str], None] | None = None
    final: bool = False  # failed for good (a config error); a crash is restarted instead
    _watch: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.model}#{self.replica}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def _spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gpt_server.cli", *self.args, env=self.env, preexec_fn=die_with_parent
        )
        self.started_at = time.monotonic()
        log.info("started worker %s (pid %d)", self.label, self.proc.pid)

    async def start(self) -> None:
        self.stopping, self.final, self.failure = False, False, None
        await self._spawn()
        self._watch = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self.stopping:
            assert self.proc is not None
            code = await self.proc.wait()
            if self.stopping:
                return
            if code == CONFIG_ERROR_EXIT:
                self.final = True
                self.failure = f"model '{self.model}' (replica {self.replica}) cannot load because of its configuration (see the log); not restarted"
                log.error("worker %s: %s", self.label, self.failure)
                if self.on_fatal is not None:
                    self.on_fatal(self.failure)
                return
            ran = time.monotonic() - self.started_at
            if ran > 60:
                backoff = 1.0
            self.failure = f"exited with code {code} after {ran:.1f}s; restarting in {backoff:.0f}s"
            log.error("worker %s %s", self.label, self.failure)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            if self.stopping:
                return
            await self._spawn()
            self.failure = None

    async def stop(self, drain: float = 15.0) -> None:
        """SIGTERM: the worker leaves the registry and lets its requests finish (``drain``
        seconds and a little), then SIGKILL."""
        self.stopping = True
        if self._watch is not None:
            self._watch.cancel()
        p = self.proc
        if p is None or p.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
        try:
            await asyncio.wait_for(p.wait(), drain + 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()


@dataclass
class InProcessReplica:
    """A replica with ``in_process: true``: its worker app runs in this process."""

    model: str
    replica: int
    runtime: WorkerRuntime
    transport: InProcessTransport
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    task: asyncio.Task[None] | None = None
    failure: str | None = None
    on_fatal: Callable[[str], None] | None = None  # a configuration error (see ProcessReplica)

    @property
    def worker_id(self) -> str:
        return self.runtime.worker_id

    @property
    def label(self) -> str:
        return f"{self.model}#{self.replica} (in process)"

    @property
    def alive(self) -> bool:
        return self.task is not None and self.failure is None

    async def start(self) -> None:
        runtime = self.runtime
        self.transport.register(runtime.address, build_worker_app(runtime, max_body_bytes=self.max_body_bytes), lambda req: Generation.start(runtime, req))
        self.task = asyncio.create_task(self._load())

    async def _load(self) -> None:
        try:
            await self.runtime.start()
        except ConfigError as exc:
            self.runtime.state = "failed"
            self.failure = f"cannot load because of its configuration: {exc}"
            log.error("in-process worker %s %s", self.label, self.failure)
            if self.on_fatal is not None:
                self.on_fatal(str(exc))
        except Exception as exc:
            self.runtime.state = "failed"
            self.failure = f"failed to load: {type(exc).__name__}: {str(exc)[:300]}"
            log.exception("in-process worker %s failed to load; it is not served", self.label)

    async def stop(self, drain: float = 10.0) -> None:
        self.transport.unregister(self.runtime.address)
        if self.task is None:  # never started
            return
        if not self.task.done():  # still loading: nothing to drain
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            return
        if self.runtime.state != "failed":
            await self.runtime.stop(drain_timeout=drain)
