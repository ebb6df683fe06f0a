"""A supervised engine-server child process: start, wait for health, restart, stop the group.

Backends that serve through an engine's own server on loopback (the relay's vLLM /
SGLang / LMDeploy servers, infinity) run it through ``EngineProcess``.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from ..procs import die_with_parent

__all__ = ["EngineProcess", "ProcessOptions", "EngineStartError"]

log = logging.getLogger(__name__)


class EngineStartError(RuntimeError):
    """The engine server did not become healthy; the message ends with its last log lines."""


@dataclass
class ProcessOptions:
    argv: list[str]
    health_url: str
    name: str = "engine"
    env: dict[str, str] = field(default_factory=dict)  # on top of this process's environment
    unset_env: list[str] = field(default_factory=list)  # variables of ours the engine must not see
    headers: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 900.0
    stop_timeout: float = 15.0
    max_backoff: float = 30.0
    log_lines: int = 200
    secrets: list[str] = field(default_factory=list)  # masked in our logs
    # called (in the supervisor thread) when a restarted engine is healthy, before it is offered
    # again: state the worker gave the old one (LoRA adapters loaded at run time) is given back
    after_restart: Callable[[], None] | None = None


class EngineProcess:
    """Runs the engine as a child in its own process group, supervised by one thread.

    The supervisor thread spawns the child (so the parent-death signal stays tied to a
    thread that lives as long as the backend), waits for its health endpoint, watches
    it and restarts it with backoff if it dies. ``healthy()`` is false meanwhile.
    """

    def __init__(self, opts: ProcessOptions) -> None:
        self.opts = opts
        self.state = "stopped"
        self.popen: subprocess.Popen[bytes] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=opts.log_lines)
        self._stopping = threading.Event()
        self._first = threading.Event()
        self._failure: str | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---- public -----------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def tail(self, n: int = 40) -> str:
        return "\n".join(list(self._tail)[-n:])

    def start(self) -> None:
        """Start the engine and block until it is healthy (or raise EngineStartError)."""
        self._thread = threading.Thread(target=self._supervise, name=f"{self.opts.name}-supervisor", daemon=True)
        self._thread.start()
        self._first.wait()
        if self._failure is not None:
            self.stop()
            raise EngineStartError(self._failure)

    def healthy(self) -> bool:
        p = self.popen
        return self.state == "ready" and p is not None and p.poll() is None

    def stop(self) -> None:
        self._stopping.set()
        if not self._first.is_set():
            self._failure = self._failure or f"{self.opts.name} was stopped during start-up"
            self._first.set()
        self._kill_group()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.opts.stop_timeout + 5)
        self.state = "stopped"

    # ---- supervisor thread ------------------------------------------------------------
    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            self.state = "starting"
            try:
                self._spawn()
            except OSError as exc:
                self._fail_or_retry(f"cannot start the engine ({exc}): {' '.join(self.opts.argv[:3])} …")
                if self._first.is_set() and self._failure is not None:
                    return
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self.opts.max_backoff)
                continue
            problem = self._wait_healthy()
            if self._stopping.is_set():
                break
            if problem is not None:
                self._kill_group()
                self._fail_or_retry(problem)
                if self._failure is not None:
                    return
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self.opts.max_backoff)
                continue
            if self._first.is_set() and self.opts.after_restart is not None:
                try:
                    self.opts.after_restart()
                except Exception:
                    log.exception("%s: restoring its state after the restart failed", self.opts.name)
            self.state = "ready"
            backoff = 1.0
            log.info("%s is ready (pid %s)", self.opts.name, self.pid)
            self._first.set()
            rc = self._wait_exit()
            if self._stopping.is_set():
                break
            self.state = "restarting"
            log.error("%s exited with code %s; restarting it. Last lines:\n%s", self.opts.name, rc, self.tail(20))
            self._kill_group()
            self._stopping.wait(backoff)
        self.state = "stopped"

    def _fail_or_retry(self, problem: str) -> None:
        message = f"{problem}\n--- last lines of {self.opts.name} ---\n{self.tail()}"
        if not self._first.is_set():  # first start: report to load()
            self._failure = message
            self._first.set()
        else:
            log.error("%s did not come back: %s", self.opts.name, message)

    def _spawn(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.opts.env}
        for name in self.opts.unset_env:
            env.pop(name, None)
        shown = " ".join("***" if a in self.opts.secrets else a for a in self.opts.argv)
        log.info("starting %s: %s", self.opts.name, shown)
        with self._lock:
            self.popen = subprocess.Popen(
                self.opts.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads touched in the child
            )
        threading.Thread(target=self._read_output, args=(self.popen,), daemon=True).start()

    def _read_output(self, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        for raw in popen.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            self._tail.append(line)
            log.info("[%s] %s", self.opts.name, line)
        popen.stdout.close()

    def _wait_healthy(self) -> str | None:
        """None when healthy; else why not."""
        deadline = time.monotonic() + self.opts.startup_timeout
        assert self.popen is not None
        with httpx.Client(timeout=5.0, headers=self.opts.headers) as client:
            while not self._stopping.is_set():
                rc = self.popen.poll()
                if rc is not None:
                    time.sleep(0.2)  # let the reader catch the last lines
                    return f"{self.opts.name} exited with code {rc} during start-up"
                try:
                    if client.get(self.opts.health_url).status_code == 200:
                        return None
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    return f"{self.opts.name} was not healthy after {self.opts.startup_timeout:g} s (startup_timeout)"
                self._stopping.wait(0.5)
        return None

    def _wait_exit(self) -> int | None:
        assert self.popen is not None
        while not self._stopping.is_set():
            try:
                return self.popen.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
        return None

    def _kill_group(self) -> None:
        """SIGTERM the child's whole process group, then SIGKILL what is left."""
        with self._lock:
            p = self.popen
        if p is None:
            return
        pgid = p.pid  # start_new_session: the child leads its own group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(self.opts.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %g s; killing it", self.opts.name, self.opts.stop_timeout)
        try:
            os.killpg(pgid, signal.SIGKILL)  # leftovers in the group (engine workers)
        except ProcessLookupError:
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
