"""The thread that owns an in-process token engine (llama.cpp, transformers), written once.

Requests reach the engine through ``submit`` from any thread and wait in a queue. The
engine thread sleeps while it has nothing to do; each turn it admits waiting sequences
under the lock and then runs one step (one forward) outside it. If the loop itself
fails, every running and waiting sequence gets the error and the engine reports
unhealthy. An engine supplies ``_busy``, ``_admit``, ``_step`` and ``_fail_running``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from ...protocol.worker import SamplingParams
from .sampling import SamplerState
from .sequences import SeqEvent, hold_events, release_events
from .textstream import TextStream
from .turnaround import Turnaround

__all__ = ["EngineThread"]

log = logging.getLogger(__name__)

# the wait for a finished sequence's successor is weighed against a recent step's time, by
# default, taken as at most this long (seconds); the step time's moving average's weight
_AUTO_HOLD_MAX = 0.05
_STEP_EMA = 0.1
# the wait is for one stream beside the finish at most: it costs every running sequence the gap,
# and a step over one sequence costs nearly what a step over two does on a CPU (8.3 against
# 13.9 ms), so with one it pays (c=2: tok/s 1.035 -> 1.058-1.075x llama-server, first token
# -4 to -7 ms) and with more it does not (c=4 and c=8: tok/s -2.5 %, first token +5.6 and +12.7 ms,
# bench/README, tenth session)
_HOLD_MAX_RUNNING = 1


class _Seq(Protocol):
    index: int
    prompt: list[int]
    params: SamplingParams
    sampler: SamplerState | None
    text: TextStream | None

    @property
    def sink(self) -> Callable[[SeqEvent], None]: ...


S = TypeVar("S", bound=_Seq)
A = TypeVar("A")  # what ``_admit`` hands to ``_step``


class EngineThread(Generic[S, A]):
    """The waiting queue, the condition the thread sleeps on, and the loop around a step.

    Call ``_start_thread()`` at the end of the subclass's ``__init__``.
    """

    def __init__(self, *, n_vocab: int, thread_name: str, label: str, nice: int = 0, send_here: bool = False) -> None:
        """``nice``: how many nice steps the engine thread runs below the rest of its process
        (Linux; the compute threads it starts, e.g. OpenMP's, inherit it), so that the event
        loops around it get a core as soon as they wake. ``send_here``: this thread sends the
        deltas it writes for handed streams itself, between its steps (``sequences.hold_events``),
        for an engine whose compute threads take every core."""
        self.n_vocab = n_vocab
        self._label = label
        self._nice = nice
        self._waiting: deque[S] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._failed: str | None = None
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self.send_here = send_here
        # the wait for a finished sequence's successor (``turnaround.py``), weighed against a
        # time: None never; -1 a recent step's (at most _AUTO_HOLD_MAX); else these seconds
        self.hold_cap: float | None = None
        self.turnaround = Turnaround()
        self._step_time = 0.0  # an average of recent steps' wall time (seconds)

    # ---- what an engine implements (on the engine thread) ---------------------------
    def _busy(self) -> bool:
        """Sequences are running (called with the lock held)."""
        raise NotImplementedError

    def _admit(self) -> A:
        """Take waiting sequences in (called with the lock held)."""
        raise NotImplementedError

    def _step(self, admitted: A) -> None:
        """One forward over the running sequences (called without the lock)."""
        raise NotImplementedError

    def _fail_running(self, error: str) -> None:
        """The loop failed: end every running sequence with ``error``."""
        raise NotImplementedError

    def _running(self) -> int:
        """How many sequences are running (called with the lock held; engines that wait for
        a finish's successor, ``hold_cap``, implement it)."""
        raise NotImplementedError

    def _loop_context(self) -> contextlib.AbstractContextManager[Any]:
        """Entered on the engine thread around the whole loop."""
        return contextlib.nullcontext()

    def _finished(self) -> None:
        """A sequence ended (an engine calls this on its thread, without the lock)."""
        if self.hold_cap is not None:
            with self._cond:
                self.turnaround.finished(time.perf_counter())

    # ---- requests (any thread) -----------------------------------------------------
    def submit(self, seqs: list[S]) -> None:
        with self._cond:
            if self._failed:
                raise RuntimeError(self._failed)
            if self.hold_cap is not None:
                idle = not self._waiting and not self._running()
                self.turnaround.arrived(time.perf_counter(), idle=idle, step=self._hold_step())
            for s in seqs:
                seed = None if s.params.seed is None else (s.params.seed + s.index) % 2**64
                s.sampler = SamplerState(
                    params=s.params, rng=np.random.default_rng(seed), n_vocab=self.n_vocab, prompt=s.prompt
                )
                s.text = TextStream(s.params.stop)
                self._waiting.append(s)
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def healthy(self) -> bool:
        return self._failed is None and self._thread.is_alive()

    # ---- the thread ----------------------------------------------------------------
    def _start_thread(self) -> None:
        self._thread.start()

    def _stop_thread(self, timeout: float) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=timeout)

    def _lower_priority(self) -> None:
        """This thread's nice value up by ``nice`` (before its first forward, so the compute
        threads the library starts from it inherit it). Raising it needs no privilege."""
        if self._nice <= 0 or not sys.platform.startswith("linux"):
            return  # elsewhere PRIO_PROCESS takes a process id, not a thread's
        try:
            # on Linux, PRIO_PROCESS with a thread id reads and sets that thread alone
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self._nice))
        except OSError as exc:
            log.warning("%s engine thread keeps its priority: %s", self._label, exc)

    def _hold(self) -> None:
        """Wait (lock held, released while waiting) for the requests expected to follow the
        recent finishes: until each finish has been followed by an arrival, or the learnt while
        (``Turnaround.hold``) is over. With requests already waiting, the wait is for the rest
        of a group that finished together (``Turnaround.hold``'s ``gathering``); on an idle
        engine, first for the rest of requests sent at once (``_gather_burst``)."""
        running = self._running()
        if running > _HOLD_MAX_RUNNING:
            self.turnaround.burst_over()
            return
        cap = self._hold_step()
        if not running and self._waiting:
            self._gather_burst(cap)
        else:
            self.turnaround.burst_over()
        gathering = bool(self._waiting)
        now = time.perf_counter()
        left = self.turnaround.hold(now, cap, gathering=gathering)
        if left <= 0:
            return
        self.turnaround.holds += 1
        if gathering:
            self.turnaround.gathered += 1
        deadline = now + left
        while self.turnaround.awaited() and not self._stop and left > 0:
            self._cond.wait(left)
            left = deadline - time.perf_counter()
        if self._waiting:
            self.turnaround.joined += 1

    def _hold_step(self) -> float:
        """The time the turnaround waits are weighed against (``hold_cap``; lock held)."""
        cap = self.hold_cap
        assert cap is not None
        return min(self._step_time, _AUTO_HOLD_MAX) if cap < 0 else cap

    def _gather_burst(self, cap: float) -> None:
        """On an idle engine, wait (lock held, released while waiting) for the rest of a burst
        of requests that began at it idle, while they keep coming (``Turnaround.burst``)."""
        left = self.turnaround.burst(time.perf_counter(), cap)
        if left > 0:
            self.turnaround.bursts += 1
        while left > 0 and not self._stop:
            self._cond.wait(left)
            left = self.turnaround.burst(time.perf_counter(), cap)
        self.turnaround.burst_over()

    def _run(self) -> None:
        self._lower_priority()
        hold_events(self.send_here)  # what a turn reports goes to the event loops together, before this thread blocks
        try:
            with self._loop_context():
                while True:
                    release_events()
                    with self._cond:
                        while not self._stop and not self._waiting and not self._busy():
                            self._cond.wait()
                        if self._stop:
                            break
                        if self.hold_cap is not None:
                            self._hold()
                        admitted = self._admit()
                    t0 = time.perf_counter()
                    self._step(admitted)
                    self._step_time += (time.perf_counter() - t0 - self._step_time) * _STEP_EMA
        except Exception as exc:  # engine failure must reach every request
            log.exception("%s engine loop failed", self._label)
            self._failed = f"engine failure ({type(exc).__name__})"  # the detail is in the log
            self._fail_running(self._failed)
            with self._cond:
                while self._waiting:
                    s = self._waiting.popleft()
                    s.sink(SeqEvent(index=s.index, error=self._failed))
        finally:
            release_events()
