"""Models as live resources: load, unload, scale, restart and reload while traffic flows.

The ``ModelManager`` owns every replica ``serve`` runs (through a ``ReplicaFactory``: local
processes, in-process workers, or another placement) and watches the registry to know when
each is ready. Taking a replica out is always: mark it draining in the registry (no new
request), wait until the requests in flight on it end, then stop it. A replacement is started
and ready before the replica it replaces is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, ConfigError, ModelEntry, parse_config, read_config_data
from ..controller.registry import Registry
from ..errors import (
    BadRequestError,
    ConflictError,
    GatewayError,
    NotFoundError,
    ServiceUnavailableError,
    TimeoutError_,
)
from ..sizes import format_bytes
from ..worker.main import backend_available
from .memory import estimate_bytes
from .replica import Replica
from .worker_calls import WorkerCaller

__all__ = ["ModelManager", "ReplicaFactory", "MAX_REPLICAS", "MAX_RUNTIME_ADAPTERS"]

log = logging.getLogger("gpt_server.launcher")

MAX_REPLICAS = 64  # what one scale call may ask for
MAX_RUNTIME_ADAPTERS = 32  # LoRA adapters loaded at run time per model (a worker registers at most 64 model ids)
# builds (does not start) replica ``index`` of ``entry``, named ``worker_id`` in the registry;
# ``raw`` is the entry's config data (what a worker process reads)
ReplicaFactory = Callable[[Config, ModelEntry, dict[str, Any], int, str], Replica]


@dataclass
class Managed:
    entry: ModelEntry
    raw: dict[str, Any]  # the entry's settings as written (config.yaml / admin body)
    estimate: int  # bytes per replica, for the memory budget
    replicas: list[Replica] = field(default_factory=list)
    draining: list[Replica] = field(default_factory=list)
    wanted: bool = False  # loaded (eager, or on_demand after a request); False = unloaded
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # LoRA adapters loaded at run time (name → path on the workers' hosts): every replica gets them
    adapters: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.entry.name

    def config_adapters(self) -> set[str]:
        """The adapters its config declares (``lora``, ``lora_adapters``): not ours to change."""
        mc = self.entry.model_config_
        return set(getattr(mc, "lora", None) or {}) | set(getattr(mc, "lora_adapters", None) or [])


class ModelManager:
    """Load / unload / scale / restart / reload, and on-demand loading within a memory budget."""

    def __init__(
        self,
        cfg: Config,
        data: dict[str, Any],
        registry: Registry,
        factory: ReplicaFactory,
        *,
        config_path: str | None = None,
        memory_budget: int = 0,
        drain_timeout: float = 30.0,
        worker_calls: WorkerCaller | None = None,
    ) -> None:
        self.cfg = cfg
        self.data = copy.deepcopy(data)
        self.registry = registry
        self.factory = factory
        self.config_path = config_path
        self.memory_budget = memory_budget
        self.drain_timeout = drain_timeout
        self.load_timeout = cfg.serve_args.load_timeout
        self.models: dict[str, Managed] = {}
        self._ops = asyncio.Lock()  # one config-changing operation (add / reload) at a time
        self._idle: asyncio.Task[None] | None = None
        self._closing = False
        self.worker_calls = worker_calls
        self._adapter_tries: dict[tuple[str, str], float] = {}  # (worker_id, adapter) → next attempt

    # ---- start / stop -----------------------------------------------------------------
    async def start(self) -> list[Replica]:
        """Start the eager models' replicas (not waiting for them); those replicas."""
        raws = _raw_entries(self.data)
        for e in self.cfg.enabled_models():
            self.models[e.name] = Managed(entry=e, raw=raws.get(e.name, {}), estimate=await _estimate(e))
        started: list[Replica] = []
        for m in self.models.values():
            if m.entry.load == "eager":
                m.wanted = True
                started += await self._grow(m, len(m.entry.workers), check_budget=False)
        self._idle = asyncio.create_task(self._idle_loop())
        return started

    async def aclose(self) -> None:
        self._closing = True
        if self._idle is not None:
            self._idle.cancel()
        reps = [r for m in self.models.values() for r in (*m.replicas, *m.draining)]
        await asyncio.gather(*(r.stop(0) for r in reps), return_exceptions=True)

    # ---- what is there ----------------------------------------------------------------
    def _replica_state(self, r: Replica, draining: bool = False) -> dict[str, Any]:
        rec = self.registry.workers.get(r.worker_id)
        if draining or (rec is not None and rec.draining):
            state, reason = "draining", None
        elif r.failure is not None:
            state, reason = "failed", r.failure
        elif rec is not None and rec.healthy and rec.state == "ready":
            state, reason = "ready", None
        else:
            state, reason = "loading", None
        return {
            "replica": r.replica, "worker_id": r.worker_id, "state": state, "reason": reason,
            "inflight": rec.tracked if rec is not None else 0,
        }

    def ready(self, r: Replica) -> bool:
        rec = self.registry.workers.get(r.worker_id)
        return rec is not None and rec.healthy and rec.state == "ready" and not rec.draining

    def describe(self, m: Managed) -> dict[str, Any]:
        reps = [self._replica_state(r) for r in m.replicas] + [self._replica_state(r, True) for r in m.draining]
        states = [r["state"] for r in reps]
        state = "unloaded" if not reps else next(
            (s for s in ("ready", "loading", "failed", "draining") if s in states), "loading"
        )
        return {
            "name": m.name, "aliases": list(m.entry.alias), "kind": m.entry.kind, "work_mode": m.entry.work_mode,
            "load": m.entry.load, "keep_alive": m.entry.keep_alive, "state": state, "replicas": reps,
            "configured_replicas": len(m.entry.workers), "memory_estimate_bytes": m.estimate,
            "idle_seconds": round(time.monotonic() - m.last_used, 1),
            "adapters": [
                {"name": a, "path": p, "replicas": sum(a in self._served_adapters(r) for r in m.replicas)}
                for a, p in m.adapters.items()
            ],
        }

    def listing(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [self.describe(m) for m in self.models.values()],
            "memory": {"budget_bytes": self.memory_budget, "used_bytes": self._used()},
        }

    def _get(self, name: str) -> Managed:
        m = self.models.get(name)
        if m is None:
            for cand in self.models.values():
                if name in cand.entry.alias:
                    return cand
            raise NotFoundError(f"no model '{name}' is configured", param="model")
        return m

    def on_demand_entries(self) -> list[ModelEntry]:
        """The on_demand models not loaded now (``/v1/models`` lists them too)."""
        return [m.entry for m in self.models.values() if m.entry.load == "on_demand" and not m.replicas]

    def lookup(self, name: str) -> str | None:
        """The on_demand model ``name`` (or an alias of it) names, if any."""
        for m in self.models.values():
            if m.entry.load == "on_demand" and name in m.entry.names and name != "*":
                return m.name
        return None

    # ---- replicas ---------------------------------------------------------------------
    def _free_index(self, m: Managed) -> int:
        used = {r.replica for r in (*m.replicas, *m.draining)}
        return next(i for i in range(len(used) + 1) if i not in used)

    async def _grow(self, m: Managed, n: int, *, check_budget: bool = True) -> list[Replica]:
        if n <= 0:
            return []
        if check_budget:
            await self._make_room(m, n * m.estimate)
        out = []
        for _ in range(n):
            i = self._free_index(m)
            r = self.factory(self.cfg, m.entry, m.raw, i, f"{m.name}-{i}-{uuid.uuid4().hex[:8]}")
            m.replicas.append(r)
            await r.start()
            out.append(r)
        return out

    async def _wait_ready(self, reps: list[Replica], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all(self.ready(r) for r in reps):
            failed = [r for r in reps if _failed_for_good(r)]
            if failed:  # a replica that failed for good does not become ready: say so now
                raise ServiceUnavailableError(
                    f"{failed[0].label} failed to load: {failed[0].failure}", code="model_load_failed"
                )
            if loop.time() > deadline:
                raise TimeoutError_(
                    f"not ready after {timeout:.0f}s: {', '.join(r.label for r in reps if not self.ready(r))}",
                    code="model_load_timeout",
                )
            await asyncio.sleep(0.1)

    async def _retire(self, m: Managed, reps: list[Replica]) -> None:
        """Drain then stop: no new request goes to ``reps``; those in flight end first."""
        for r in reps:
            if r in m.replicas:
                m.replicas.remove(r)
            m.draining.append(r)
        recs = [self.registry.drain(r.worker_id) for r in reps]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        while any(rec is not None and rec.tracked > 0 for rec in recs) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        try:
            await asyncio.gather(*(r.stop(self.drain_timeout) for r in reps), return_exceptions=True)
        finally:
            for r in reps:
                self.registry.unregister(r.worker_id)
                if r in m.draining:
                    m.draining.remove(r)

    # ---- operations -------------------------------------------------------------------
    def _check_current(self, m: Managed) -> None:
        """Under ``m.lock``: the model was not removed (reload, rollback) while this waited."""
        if self.models.get(m.entry.name) is not m:
            raise NotFoundError(f"model '{m.entry.name}' was removed", param="model", code="model_not_found")

    async def load(self, name: str, *, wait: bool = True) -> dict[str, Any]:
        m = self._get(name)
        async with m.lock:
            self._check_current(m)
            m.wanted = True
            m.last_used = time.monotonic()
            dead = [r for r in m.replicas if _failed_for_good(r)]
            if dead:  # a load that failed (OOM, an engine error) is tried again, not reused
                await self._retire(m, dead)
            reps = m.replicas or await self._grow(m, len(m.entry.workers))
        if wait:
            await self._wait_or_fail(m, reps)
        return self.describe(m)

    async def _wait_or_fail(self, m: Managed, reps: list[Replica]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.load_timeout
        while not any(self.ready(r) for r in reps):
            failed = [r.failure for r in reps if r.failure]
            if failed and len(failed) == len(reps):
                raise ServiceUnavailableError(f"model '{m.name}' failed to load: {failed[0]}", code="model_load_failed")
            if loop.time() > deadline:
                raise TimeoutError_(f"model '{m.name}' not ready after {self.load_timeout:.0f}s", code="model_load_timeout")
            if not any(r in m.replicas for r in reps):
                raise ServiceUnavailableError(f"model '{m.name}' was unloaded while loading", code="model_unloaded")
            await asyncio.sleep(0.1)

    async def unload(self, name: str) -> dict[str, Any]:
        m = self._get(name)
        async with m.lock:
            m.wanted = False
            await self._retire(m, list(m.replicas))
        log.info("model %s unloaded", m.name)
        return self.describe(m)

    async def scale(self, name: str, replicas: int, *, wait: bool = True) -> dict[str, Any]:
        if not 0 <= replicas <= MAX_REPLICAS:
            raise BadRequestError(f"replicas must be 0..{MAX_REPLICAS}", param="replicas")
        m = self._get(name)
        async with m.lock:
            self._check_current(m)
            have = len(m.replicas)
            new: list[Replica] = []
            if replicas > have:
                new = await self._grow(m, replicas - have)
            elif replicas < have:
                # the newest go first; a replica not ready yet before a ready one
                order = sorted(m.replicas, key=lambda r: (self.ready(r), -r.replica))
                await self._retire(m, order[: have - replicas])
            m.wanted = replicas > 0
        if wait and new:
            try:
                await self._wait_ready(new, self.load_timeout)
            except BaseException:
                async with m.lock:  # replicas that never became ready do not stay counted
                    await self._retire(m, [r for r in new if not self.ready(r)])
                raise
        log.info("model %s scaled from %d to %d replica(s)", m.name, have, replicas)
        return self.describe(m)

    async def restart(self, name: str, index: int) -> dict[str, Any]:
        """Rolling: a new replica, ready, then the old one drained and stopped."""
        m = self._get(name)
        async with m.lock:
            self._check_current(m)
            old = next((r for r in m.replicas if r.replica == index), None)
            if old is None:
                raise NotFoundError(f"model '{m.name}' has no replica {index}", param="replica", code="replica_not_found")
            await self._replace(m, [old], m.entry, m.raw)
        return self.describe(m)

    async def _replace(self, m: Managed, old: list[Replica], entry: ModelEntry, raw: dict[str, Any]) -> None:
        m.entry, m.raw = entry, raw
        new = await self._grow(m, len(old), check_budget=False)
        try:
            await self._wait_ready(new, self.load_timeout)
        except BaseException:
            await self._retire(m, new)  # the old ones keep serving
            raise
        await self._retire(m, old)

    async def add(self, item: Any, *, wait: bool = True) -> dict[str, Any]:
        """Load a model from a config entry ``{name: {...settings}}`` (config.yaml's shape)."""
        if not (isinstance(item, dict) and len(item) == 1):
            raise BadRequestError("the body is one config entry: {\"<name>\": {model_config: ..., ...}}", param="model")
        name = str(next(iter(item)))
        async with self._ops:
            if name in self.models:
                raise ConflictError(f"model '{name}' is already configured; unload it or use reload", param="model", code="model_exists")
            data = copy.deepcopy(self.data)
            data["models"] = [*(data.get("models") or []), copy.deepcopy(item)]
            try:
                cfg = await asyncio.to_thread(_validated, data, "models", source="model entry")
            except BadRequestError as exc:  # the errors name keys of the body, not of the whole config
                exc.message = exc.message.replace(f"models[{len(data['models']) - 1}].", "")
                exc.param = name
                raise
            entry = cfg.model(name)
            if not entry.enable:
                raise BadRequestError(f"model '{name}' has enable: false", param="enable")
            m = Managed(entry=entry, raw=copy.deepcopy(item[name]), estimate=await _estimate(entry))
            self.cfg, self.data = cfg, data
            self.models[name] = m
        log.info("model %s added (%s)", name, entry.load)
        if entry.load == "eager":
            try:
                return await self.load(name, wait=wait)
            except ServiceUnavailableError as exc:
                if exc.code == "memory_budget_exceeded":  # nothing was started: the entry goes too
                    await self._forget(name)
                raise
        return self.describe(m)

    async def _forget(self, name: str) -> None:
        m = self.models.pop(name, None)
        if m is not None:
            async with m.lock:  # a load of it in progress finishes first; later ones see it is gone
                await self._retire(m, list(m.replicas))
        self.data["models"] = [i for i in self.data.get("models") or [] if next(iter(i)) != name]
        with contextlib.suppress(ConfigError):
            self.cfg = parse_config(self.data, source="config")

    async def reload(self) -> dict[str, Any]:
        """Read the config file again and apply only what changed in ``models:``."""
        if not self.config_path:
            raise BadRequestError("serve runs the built-in default config: there is no file to reload", code="no_config_file")
        async with self._ops:
            try:
                data = await asyncio.to_thread(read_config_data, self.config_path)
            except ConfigError as exc:
                raise BadRequestError(str(exc), code="invalid_config") from None
            if not isinstance(data, dict):
                raise BadRequestError(f"{self.config_path}: the top level must be a mapping", code="invalid_config")
            # this start's command-line overrides and secret stay; only models: is new
            merged = {**copy.deepcopy(self.data), "models": data.get("models") or []}
            cfg = await asyncio.to_thread(_validated, merged, "models", source=self.config_path)
            old_raw = {n: m.raw for n, m in self.models.items()}
            new_raw = _raw_entries(merged)
            enabled = {e.name for e in cfg.enabled_models()}
            added = [n for n in enabled if n not in old_raw]
            removed = [n for n in old_raw if n not in enabled]
            changed = [n for n in enabled if n in old_raw and old_raw[n] != new_raw[n]]
            self.cfg, self.data = cfg, merged
            for n in removed:
                await self._forget(n)
            for n in added:
                e = cfg.model(n)
                self.models[n] = Managed(entry=e, raw=new_raw[n], estimate=await _estimate(e))
            for n in changed:
                await self._apply_change(self.models[n], cfg.model(n), new_raw[n])
            for n in added:
                if cfg.model(n).load == "eager":
                    await self.load(n, wait=True)
        result = {
            "object": "reload", "added": sorted(added), "removed": sorted(removed), "changed": sorted(changed),
            "unchanged": sorted(n for n in enabled if n not in added and n not in changed),
        }
        log.info("config reloaded: %s", {k: v for k, v in result.items() if k != "object"})
        return result

    async def _apply_change(self, m: Managed, entry: ModelEntry, raw: dict[str, Any]) -> None:
        async with m.lock:
            m.estimate = await _estimate(entry)
            only_count = {k: v for k, v in raw.items() if k != "workers"} == {k: v for k, v in m.raw.items() if k != "workers"}
            if not m.replicas or (only_count and len(set(map(str, raw.get("workers") or [{}]))) <= 1):
                m.entry, m.raw = entry, raw
                if m.replicas or (entry.load == "eager" and m.wanted):
                    want = len(entry.workers)
                    have = len(m.replicas)
                    if want > have:
                        new = await self._grow(m, want - have, check_budget=False)
                        await self._wait_ready(new, self.load_timeout)
                    elif want < have:
                        await self._retire(m, m.replicas[want:])
                return
            old = list(m.replicas)
            await self._replace(m, old[: len(entry.workers)], entry, raw)
            if len(entry.workers) > len(old):
                new = await self._grow(m, len(entry.workers) - len(old), check_budget=False)
                await self._wait_ready(new, self.load_timeout)
            elif len(old) > len(entry.workers):
                await self._retire(m, old[len(entry.workers):])

    # ---- LoRA adapters at run time -----------------------------------------------------
    def _served_adapters(self, r: Replica) -> set[str]:
        rec = self.registry.workers.get(r.worker_id)
        return set(rec.info.adapters) if rec is not None else set()

    def _taken(self, name: str) -> str | None:
        """What already answers to ``name`` (a model, an alias, another adapter), if anything."""
        for o in self.models.values():
            if name in o.entry.names or name in o.config_adapters() or name in o.adapters:
                return o.name
        if self.registry.knows(name):
            return next(r.info.model_name for r in self.registry.workers.values() if name in r.names)
        return None

    async def load_adapter(self, model: str, name: str, path: str) -> dict[str, Any]:
        """Load LoRA adapter ``path`` on every ready replica of ``model``; it is then the model
        id ``name`` (parent: ``model``). All or nothing: a replica that refuses (the engine cannot,
        the path is not there) undoes it on the others. Replicas started later, or restarted,
        get it from ``_sync_adapters``."""
        m = self._get(model)
        async with m.lock:
            self._check_current(m)
            owner = self._taken(name)
            if owner is not None:
                raise ConflictError(
                    f"'{name}' is already a model id (of model '{owner}'): choose another adapter name",
                    param="name", code="model_exists",
                )
            if len(m.adapters) >= MAX_RUNTIME_ADAPTERS:
                raise BadRequestError(
                    f"model '{m.name}' has {len(m.adapters)} adapters loaded at run time, the most there may be: unload one first",
                    param="name", code="too_many_adapters",
                )
            ready = [r for r in m.replicas if self.ready(r)]
            if not ready:
                raise ConflictError(f"model '{m.name}' has no ready replica: load it first", param="model", code="model_not_loaded")
            done: list[Replica] = []
            try:
                for r in ready:  # one after the other: the first refusal stops it early
                    await self._change(r, "load", name, path)
                    done.append(r)
            except BaseException:
                for r in done:
                    with contextlib.suppress(Exception):
                        await self._change(r, "unload", name, None)
                raise
            m.adapters[name] = path
        log.info("LoRA adapter %s (%s) loaded on %d replica(s) of %s", name, path, len(ready), m.name)
        return self.describe(m)

    async def unload_adapter(self, model: str, name: str) -> dict[str, Any]:
        m = self._get(model)
        async with m.lock:
            self._check_current(m)
            if name not in m.adapters:
                if name in m.config_adapters():
                    raise BadRequestError(
                        f"adapter '{name}' is declared in the config of model '{m.name}': remove it there and reload",
                        param="name", code="adapter_in_config",
                    )
                raise NotFoundError(f"model '{m.name}' has no adapter '{name}' loaded at run time", param="name", code="adapter_not_found")
            del m.adapters[name]  # replicas that miss the unload now are unloaded by _sync_adapters
            for r in m.replicas:
                if name in self._served_adapters(r):
                    try:
                        await self._change(r, "unload", name, None)
                    except GatewayError as exc:
                        log.warning("unloading adapter %s from %s failed (%s); will try again", name, r.label, exc)
        log.info("LoRA adapter %s unloaded from %s", name, m.name)
        return self.describe(m)

    async def _change(self, r: Replica, op: str, name: str, path: str | None) -> None:
        rec = self.registry.workers.get(r.worker_id)
        if self.worker_calls is None or rec is None:
            raise ServiceUnavailableError(f"{r.label} cannot be reached", code="replica_unreachable")
        body: dict[str, Any] = {"op": op, "name": name}
        if path is not None:
            body["path"] = path
        await self.worker_calls.post(rec.info.address, "/worker/adapters", body)

    async def _sync_adapters(self) -> None:
        """Each ready replica serves exactly its model's run-time adapters: a replica that
        registered without one (started later, or restarted) gets it, one that still has an
        unloaded one loses it. Failures are logged and tried again after a while."""
        now = time.monotonic()
        for m in list(self.models.values()):
            if m.lock.locked():
                continue
            keep = m.config_adapters()
            for r in list(m.replicas):
                if not self.ready(r):
                    continue
                have = self._served_adapters(r) - keep
                todo: list[tuple[str, str, str | None]] = [("load", a, p) for a, p in m.adapters.items() if a not in have]
                todo += [("unload", a, None) for a in have if a not in m.adapters]
                for op, a, p in todo:
                    key = (r.worker_id, a)
                    if self._adapter_tries.get(key, 0.0) > now:
                        continue
                    try:
                        async with m.lock:
                            await self._change(r, op, a, p)
                        self._adapter_tries.pop(key, None)
                        log.info("LoRA adapter %s: %s on %s (out of step with its model)", a, op, r.label)
                    except GatewayError as exc:
                        self._adapter_tries[key] = now + 10.0
                        log.warning("LoRA adapter %s: %s on %s failed (%s); trying again in 10s", a, op, r.label, exc)
        if len(self._adapter_tries) > 10_000:
            self._adapter_tries.clear()

    # ---- on demand --------------------------------------------------------------------
    def touch(self, model: str) -> None:
        m = self.models.get(model)
        if m is not None:
            m.last_used = time.monotonic()

    async def ensure_loaded(self, model: str) -> None:
        """A request for an unloaded on_demand model waits for its load."""
        m = self._get(model)
        m.last_used = time.monotonic()
        if any(self.ready(r) for r in m.replicas):
            return
        log.info("loading on_demand model %s for a request", m.name)
        await self.load(m.name, wait=True)

    def _inflight(self, m: Managed) -> int:
        n = 0
        for r in (*m.replicas, *m.draining):
            rec = self.registry.workers.get(r.worker_id)
            if rec is not None:
                n += rec.tracked + rec.queue_length
        return n

    async def _idle_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(0.5)
            try:
                await self._sync_adapters()
            except Exception:
                log.exception("syncing LoRA adapters failed")
            now = time.monotonic()
            for m in list(self.models.values()):
                if m.entry.load != "on_demand" or m.entry.keep_alive < 0 or not m.replicas or m.lock.locked():
                    continue
                failed = all(_failed_for_good(r) for r in m.replicas)
                if not failed and (self._inflight(m) or not all(self.ready(r) for r in m.replicas)):
                    m.last_used = now  # busy, or still loading: idle time starts once it serves
                elif now - m.last_used > m.entry.keep_alive:
                    log.info("on_demand model %s idle for %.0fs (keep_alive %gs): unloading", m.name, now - m.last_used, m.entry.keep_alive)
                    with contextlib.suppress(Exception):
                        await self.unload(m.name)

    # ---- memory budget ----------------------------------------------------------------
    def _used(self) -> int:
        return sum(m.estimate * (len(m.replicas) + len(m.draining)) for m in self.models.values())

    async def _make_room(self, m: Managed, need: int) -> None:
        if not self.memory_budget:
            return
        evicted: list[str] = []
        while self._used() + need > self.memory_budget:
            idle = sorted(
                (o for o in self.models.values()
                 if o is not m and o.entry.load == "on_demand" and o.replicas and not self._inflight(o) and not o.lock.locked()),
                key=lambda o: o.last_used,
            )
            if not idle:
                raise ServiceUnavailableError(
                    f"loading '{m.name}' needs {format_bytes(need)} ({need} bytes); {format_bytes(self._used())} "
                    f"({self._used()} bytes) of the memory budget of {format_bytes(self.memory_budget)} "
                    f"({self.memory_budget} bytes) is in use and no idle on_demand model is left to unload"
                    + (f" (unloaded: {', '.join(evicted)})" if evicted else ""),
                    code="memory_budget_exceeded",
                )
            victim = idle[0]
            log.info("memory budget: unloading idle model %s (LRU) to make room for %s", victim.name, m.name)
            victim.wanted = False
            await self._retire(victim, list(victim.replicas))
            evicted.append(victim.name)


def _failed_for_good(r: Replica) -> bool:
    """Down and not coming back by itself: a load error, a config error, a placement refused
    (a worker process between a crash and its restart is down but not failed for good)."""
    return r.failure is not None and not r.alive and getattr(r, "final", True)


def _raw_entries(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in data.get("models") or []:
        if isinstance(item, dict) and len(item) == 1:
            (name, body), = item.items()
            out[str(name)] = body if isinstance(body, dict) else {}
    return out


def _validated(data: dict[str, Any], what: str, source: str = "config") -> Config:
    """The whole config, validated as at start (named errors → 400), engines available."""
    try:
        cfg = parse_config(data, source=source)
        for e in cfg.enabled_models():
            backend_available(e)
    except ConfigError as exc:
        raise BadRequestError(str(exc), param=what, code="invalid_config") from None
    return cfg


async def _estimate(entry: ModelEntry) -> int:
    return await asyncio.to_thread(estimate_bytes, entry)
