"""Prometheus metrics for the gateway (prometheus-client), one registry per app."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..protocol.worker import DeltaEvent, Event, UsageEvent, WorkerView
from .history import History

__all__ = ["Metrics", "MetricsMiddleware"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The Prometheus registry; ``history`` (the dashboard's charts) gets the same observations."""

    def __init__(self, history: History | None = None) -> None:
        self.history = history
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("gpt_server_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.duration = Histogram("gpt_server_http_request_duration_seconds", "Time to the response head", ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.errors = Counter("gpt_server_errors", "Error responses by route and OpenAI error type", ["route", "type"], registry=r)
        self.ttft = Histogram("gpt_server_time_to_first_token_seconds", "Time to first token", ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("gpt_server_generation_seconds", "End-to-end generation time", ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.handed = Counter(
            "gpt_server_streams_handed", "Streams a worker on this host wrote to the client's connection itself", ["model"], registry=r
        )
        self.tokens = Counter("gpt_server_tokens", "Tokens processed", ["model", "worker", "kind"], registry=r)
        self.queue = Gauge("gpt_server_worker_queue_length", "Requests queued or running on a worker", ["model", "worker"], registry=r)
        self.healthy = Gauge("gpt_server_worker_healthy", "1 when the worker is healthy", ["model", "worker"], registry=r)

    def first_token(self, model: str, ttft: float) -> None:
        """Record a time to first token (seconds from the request sent to the worker)."""
        self.ttft.labels(model).observe(ttft)
        if self.history is not None:
            self.history.first_token(model, ttft)

    async def metered(
        self, batches: AsyncIterator[list[Event]], model: str, worker: str, start: float | None = None
    ) -> AsyncIterator[list[Event]]:
        """Pass batches of events through, recording time to first token, tokens and duration,
        counted from ``start`` (``time.perf_counter()`` when the request was sent to the worker;
        a worker answers its status line with the first event, so the first read is no start)."""
        start = time.perf_counter() if start is None else start
        first = True
        try:
            async for batch in batches:
                for ev in batch:
                    if first and isinstance(ev, DeltaEvent):  # a whole answer's came ``held`` seconds before
                        self.first_token(model, time.perf_counter() - start - (ev.held or 0.0))
                        first = False
                    elif isinstance(ev, UsageEvent):
                        self.tokens.labels(model, worker, "prompt").inc(ev.prompt_tokens)
                        self.tokens.labels(model, worker, "completion").inc(ev.completion_tokens)
                        self.e2e.labels(model).observe(time.perf_counter() - start)
                        if self.history is not None:
                            self.history.tokens(model, ev.completion_tokens)
                yield batch
        finally:
            aclose = getattr(batches, "aclose", None)
            if aclose is not None:
                await aclose()  # close the upstream now, not when garbage-collected

    def render(self, workers: list[WorkerView]) -> bytes:
        self.queue.clear()
        self.healthy.clear()
        for w in workers:
            self.queue.labels(w.model_name, w.worker_id).set(w.queue_length)
            self.healthy.labels(w.model_name, w.worker_id).set(1 if w.healthy else 0)
        return generate_latest(self.registry)


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found", 413: "request_too_large", 429: "rate_limit_error", 504: "timeout"}


class MetricsMiddleware:
    """Counts requests and errors by route template and status; times the response head."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # the labelled series, kept: ``labels()`` checks and locks each time (~10 µs a call). Route
        # templates, statuses and error types are few, so this stays small.
        self._series: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(*labels)
        return child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def wrapped(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                self._child(self.metrics.duration, _route(scope)).observe(time.perf_counter() - start)
            await send(msg)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            route = _route(scope)
            self._child(self.metrics.requests, route, str(status)).inc()
            if status >= 400:
                self._child(self.metrics.errors, route, _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path or "unmatched"
