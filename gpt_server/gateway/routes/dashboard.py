"""GET /v1/dashboard: every configured model and every live worker, for the web UI.

Workers report cumulative counters in their heartbeats (requests, completion tokens,
resident memory, last error, state); clients compute rates from successive reads. The
``history`` key holds the charts' samples per model, kept by this gateway (``gateway/history.py``):
all of them, or with ``?since=<t>`` those after the sample time ``t`` a client already has.

What an API key sees is model-level: states, counters and whether a worker has failed, never
a worker's address, pid or raw error text. ``GET /admin/dashboard`` (an admin key, see
``serve_args.admin_keys``) lists the workers in full.
"""

from __future__ import annotations

import time
from typing import Annotated
from urllib.parse import urlparse

from fastapi import APIRouter, Query, Request

from ...config import Config
from ...protocol.kinds import kind_label
from ...protocol.worker import WorkerView

__all__ = ["router", "admin_router", "worker_state", "model_rows", "CLIENT_WORKER_KEYS"]

router = APIRouter()
admin_router = APIRouter()  # mounted behind the admin guard

# what an API key holder sees of a worker (no address, pid, raw error)
CLIENT_WORKER_KEYS = ("worker_id", "model_name", "replica", "state", "healthy", "capacity", "queue_length", "active",
                      "requests_total", "tokens_total", "rss_bytes", "engine", "context_length")
# a sample time as ``?since=`` takes it (seconds since the epoch)
Since = Annotated[float | None, Query(ge=0, le=1e11, description="only the history samples after this sample time")]


def worker_state(w: WorkerView) -> str:
    """loading / ready / draining / unhealthy, as the dashboard shows it."""
    if not w.healthy:
        return "unhealthy"
    return w.state or "ready"


def _model_state(configured: int, workers: list[WorkerView]) -> str:
    states = [w.state for w in workers]
    if "ready" in states:
        return "ready"
    if not workers:
        return "loading" if configured else "gone"
    return "unhealthy" if "unhealthy" in states else states[0]


def model_rows(config: Config, workers: list[WorkerView]) -> list[dict]:
    """One row per configured (enabled) model, plus any model only seen through a worker."""
    by_model: dict[str, list[WorkerView]] = {}
    for w in workers:
        by_model.setdefault(w.model_name, []).append(w)
    rows: list[dict] = []
    seen: set[str] = set()
    for m in config.enabled_models():
        ws = by_model.get(m.name, [])
        seen.add(m.name)
        rows.append(_row(m.name, m.alias, m.kind, m.work_mode, len(m.workers), ws))
    for name, ws in sorted(by_model.items()):
        if name not in seen:
            info = ws[0]
            rows.append(_row(name, info.aliases, info.model_kind, None, 0, ws))
    return rows


def _memory(ws: list[WorkerView]) -> int:
    """Resident bytes of a model's workers, a process counted once (in-process replicas share one)."""
    seen: dict[tuple[str, int | None], int] = {}
    for w in ws:
        host = "inproc" if w.address.startswith("inproc://") else (urlparse(w.address).hostname or "")
        key = (host, w.pid) if w.pid is not None else (w.worker_id, None)
        seen[key] = max(seen.get(key, 0), w.rss_bytes)
    return sum(seen.values())


def _row(name: str, aliases: list[str], kind: str, work_mode: str | None, configured: int, ws: list[WorkerView]) -> dict:
    caps = sorted({c for w in ws for c in w.capabilities})
    contexts = [w.context_length for w in ws if w.context_length]
    return {
        "name": name,
        "aliases": list(aliases),
        "kind": kind,
        "kind_label": kind_label(kind),
        "work_mode": work_mode or next((w.engine for w in ws if w.engine), None),
        "capabilities": caps,
        "context_length": max(contexts) if contexts else None,
        "configured_workers": configured,
        "live_workers": len(ws),
        "ready_workers": sum(1 for w in ws if w.state == "ready"),
        "state": _model_state(configured, ws),
        "requests_total": sum(w.requests_total for w in ws),
        "tokens_total": sum(w.tokens_total for w in ws),
        "queue_length": sum(w.queue_length for w in ws),
        "memory_bytes": _memory(ws),
    }


def _client_worker(w: WorkerView) -> dict:
    d = w.model_dump(include=set(CLIENT_WORKER_KEYS))
    d["has_error"] = w.last_error is not None
    return d


async def _listing(request: Request, since: float | None) -> tuple[list[WorkerView], dict]:
    workers = [w.model_copy(update={"state": worker_state(w)}) for w in await request.app.state.controller.workers()]
    workers.sort(key=lambda w: (w.model_name, w.replica, w.worker_id))
    head = {
        "object": "dashboard",
        "time": time.time(),
        "models": model_rows(request.app.state.config, workers),
        "history": request.app.state.history.snapshot(since),  # model-level: the same in both views
    }
    return workers, head


@router.get("/v1/dashboard")
async def dashboard(request: Request, since: Since = None) -> dict:
    workers, head = await _listing(request, since)
    return {**head, "view": "client", "workers": [_client_worker(w) for w in workers]}


@admin_router.get("/admin/dashboard")
async def admin_dashboard(request: Request, since: Since = None) -> dict:
    workers, head = await _listing(request, since)
    return {**head, "view": "admin", "workers": [w.model_dump() for w in workers]}
