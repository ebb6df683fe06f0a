"""The dashboard's charts: a short history per model, kept by the gateway from its own metering.

Every ``interval`` seconds (5 by default) each model gets one sample of the window just
closed: completion tokens/s, requests/s, time to first token and request latency (p50 and
p99 of the requests that ended in it) and the peak number of its requests this gateway had
open on workers. ``size`` samples are kept per model (180: 15 minutes at 5 s), in a ring.

Cheap per request and bounded by construction: a request adds a counter or two and one
float to a list of at most ``reservoir`` per window (a uniform sample beyond that); windows
close lazily, on the next record or read, so there is no task; at most ``max_models``
models are followed, and a model idle for a whole ring is forgotten. It counts this
gateway's traffic only (each gateway of a deployment keeps its own).
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["History", "SERIES", "percentile"]

# the columns of a model's history, in sample order after ``t``
SERIES = ("tok_s", "req_s", "ttft_p50", "ttft_p99", "latency_p50", "latency_p99", "queue")

_Sample = tuple[float, float, float, float | None, float | None, float | None, float | None, int]


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ascending ``sorted_values``; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class _Reservoir:
    """At most ``cap`` values, a uniform sample of all added since the last ``clear``."""

    __slots__ = ("cap", "seen", "values")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen = 0
        self.values: list[float] = []

    def add(self, x: float) -> None:
        self.seen += 1
        if len(self.values) < self.cap:
            self.values.append(x)
        else:
            j = random.randrange(self.seen)
            if j < self.cap:
                self.values[j] = x

    def quantiles(self) -> tuple[float | None, float | None]:
        v = sorted(self.values)
        return percentile(v, 50), percentile(v, 99)

    def clear(self) -> None:
        self.seen = 0
        self.values.clear()


class _Model:
    """One model: its ring of samples and the open window."""

    __slots__ = ("samples", "inflight", "peak", "requests", "tokens", "ttft", "latency", "idle")

    def __init__(self, size: int, reservoir: int) -> None:
        self.samples: deque[_Sample] = deque(maxlen=size)
        self.inflight = 0
        self.peak = 0
        self.requests = 0
        self.tokens = 0
        self.ttft = _Reservoir(reservoir)
        self.latency = _Reservoir(reservoir)
        self.idle = 0  # samples in a row with no traffic and nothing in flight

    def close(self, t: float, interval: float) -> None:
        ttft = self.ttft.quantiles()
        lat = self.latency.quantiles()
        self.samples.append((t, self.tokens / interval, self.requests / interval, *ttft, *lat, self.peak))
        busy = self.requests or self.tokens or self.peak
        self.idle = 0 if busy else self.idle + 1
        self.requests = self.tokens = 0
        self.ttft.clear()
        self.latency.clear()
        self.peak = self.inflight

    def empty_windows(self, ends: Iterable[float]) -> None:
        """Samples for windows in which nothing happened (the gateway saw no traffic)."""
        for t in ends:
            self.samples.append((t, 0.0, 0.0, None, None, None, None, self.inflight))
            self.idle = 0 if self.inflight else self.idle + 1


class History:
    def __init__(
        self,
        interval: float = 5.0,
        size: int = 180,
        *,
        max_models: int = 256,
        reservoir: int = 512,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = interval
        self.size = size
        self.max_models = max_models
        self.reservoir = reservoir
        self.clock = clock
        self.models: dict[str, _Model] = {}
        self.window_end = self._align(clock()) + interval

    def _align(self, now: float) -> float:
        return math.floor(now / self.interval) * self.interval

    # ---- recording (one call per event; all O(1)) ------------------------------
    def _model(self, name: str) -> _Model | None:
        self._roll()
        m = self.models.get(name)
        if m is None and len(self.models) < self.max_models:
            m = self.models[name] = _Model(self.size, self.reservoir)
        return m

    def begin(self, model: str) -> None:
        """A request of ``model`` has been sent to a worker (dispatched)."""
        m = self._model(model)
        if m is not None:
            m.inflight += 1
            m.peak = max(m.peak, m.inflight)

    def end(self, model: str, seconds: float) -> None:
        """A request ``begin`` announced has left its worker, ``seconds`` after it was sent."""
        m = self._model(model)
        if m is not None:
            m.inflight = max(0, m.inflight - 1)
            m.requests += 1
            m.latency.add(seconds)

    def abort(self, model: str) -> None:
        """A request ``begin`` announced has left its worker without an answer (retried elsewhere, or failed)."""
        m = self._model(model)
        if m is not None:
            m.inflight = max(0, m.inflight - 1)

    def first_token(self, model: str, seconds: float) -> None:
        m = self._model(model)
        if m is not None:
            m.ttft.add(seconds)

    def tokens(self, model: str, completion_tokens: int) -> None:
        m = self._model(model)
        if m is not None:
            m.tokens += completion_tokens

    # ---- windows ------------------------------------------------------------------
    def _roll(self) -> None:
        now = self.clock()
        if now < self.window_end:
            if now < self.window_end - 2 * self.interval:  # the clock went back: start again from now
                self.window_end = self._align(now) + self.interval
            return
        closed = self.window_end
        skipped = int((now - closed) // self.interval)  # whole windows since with nothing recorded
        for m in self.models.values():
            m.close(closed, self.interval)
        if skipped:
            ends = [closed + self.interval * i for i in range(max(1, skipped - self.size + 1), skipped + 1)]
            for m in self.models.values():
                m.empty_windows(ends)
        self.window_end = closed + self.interval * (skipped + 1)
        for name in [n for n, m in self.models.items() if m.idle >= self.size and not m.inflight]:
            del self.models[name]  # quiet for a whole ring: nothing left to draw

    def snapshot(self, since: float | None = None) -> dict[str, Any]:
        """The closed samples (those after ``since``, a sample time, when given), per model,
        as columns: ``{"interval", "size", "models": {name: {"t": [...], "tok_s": [...], …}}}``."""
        self._roll()
        out: dict[str, dict[str, list[Any]]] = {}
        for name, m in self.models.items():
            rows = [s for s in m.samples if since is None or s[0] > since]
            cols: dict[str, list[Any]] = {"t": [s[0] for s in rows]}
            for i, key in enumerate(SERIES, start=1):
                cols[key] = [_round(s[i]) for s in rows]
            out[name] = cols
        return {"interval": self.interval, "size": self.size, "models": out}


def _round(x: float | int | None) -> float | int | None:
    if x is None or isinstance(x, int):
        return x
    return round(x, 4)
