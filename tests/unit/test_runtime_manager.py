"""The model manager against a real registry, with replicas that register themselves as a
worker would (the seam a placement such as Ray implements): drain before stop, LRU eviction
within the memory budget, on_demand loading, a bad reload that changes nothing."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpt_server.config import Config, ModelEntry, parse_config
from gpt_server.controller.dispatch import make_policy
from gpt_server.controller.registry import Registry
from gpt_server.errors import BadRequestError, ServiceUnavailableError
from gpt_server.protocol.worker import WorkerInfo
from gpt_server.runtime.manager import ModelManager
from tests.helpers import smollm_entry

GiB = 2**30


class FakeReplica:
    """Registers on start (ready at once), records when it was stopped and what was in flight."""

    def __init__(self, registry: Registry, entry: ModelEntry, index: int, worker_id: str, log: list[str]) -> None:
        self.registry, self.entry, self.replica, self.worker_id, self.log = registry, entry, index, worker_id, log
        self.model = entry.name
        self.alive = False
        self.failure: str | None = None

    @property
    def label(self) -> str:
        return f"{self.model}#{self.replica}"

    async def start(self) -> None:
        self.alive = True
        self.registry.register(WorkerInfo(worker_id=self.worker_id, address=f"inproc://t/{self.worker_id}", model_name=self.model,
                                          aliases=self.entry.alias, capacity=4, model_kind=self.entry.kind))
        self.log.append(f"start {self.label}")

    async def stop(self, drain: float = 15.0) -> None:
        rec = self.registry.workers.get(self.worker_id)
        self.log.append(f"stop {self.label} inflight={rec.tracked if rec else 0}")
        self.alive = False
        self.registry.unregister(self.worker_id)


def _entry(name: str, **kw: Any) -> dict[str, Any]:
    e = smollm_entry(name)
    e[name].update(alias=[], **kw)
    return e


def _manager(models: list[dict[str, Any]], budget: int = 0, path: str | None = None) -> tuple[ModelManager, list[str]]:
    data = {"models": models}
    cfg: Config = parse_config(copy.deepcopy(data))
    registry = Registry(make_policy("round_robin"))
    log: list[str] = []
    mgr = ModelManager(cfg, data, registry, lambda c, e, raw, i, wid: FakeReplica(registry, e, i, wid, log),
                       config_path=path, memory_budget=budget, drain_timeout=5)
    return mgr, log


def test_scale_down_waits_for_the_requests_in_flight() -> None:
    async def run() -> None:
        mgr, log = _manager([_entry("a")])
        await mgr.start()
        await mgr.scale("a", 2)
        first = mgr.registry.dispatch("a", track=True)
        assert first is not None
        # the newest replica goes; a request in flight on it must end first
        victim = max(mgr.models["a"].replicas, key=lambda r: r.replica)
        while first.worker_id != victim.worker_id:
            mgr.registry.done(first.worker_id)
            first = mgr.registry.dispatch("a", track=True)
            assert first is not None
        task = asyncio.create_task(mgr.scale("a", 1))
        await asyncio.sleep(0.3)
        assert not task.done() and mgr.registry.dispatch("a") is not None  # draining: the other one serves
        assert all(mgr.registry.dispatch("a").worker_id != victim.worker_id for _ in range(4))  # type: ignore[union-attr]
        mgr.registry.done(first.worker_id)
        result = await task
        assert log[-1] == "stop a#1 inflight=0" and len(result["replicas"]) == 1
        await mgr.aclose()

    asyncio.run(run())


def test_memory_budget_evicts_the_least_recently_used_idle_model_then_refuses() -> None:
    async def run() -> None:
        models = [_entry(n, load="on_demand", memory_estimate="1GiB") for n in ("x", "y")]
        mgr, log = _manager([*models, _entry("e", memory_estimate="1GiB")], budget=int(2.5 * GiB))
        await mgr.start()
        await mgr.ensure_loaded("x")
        await asyncio.sleep(0.01)
        await mgr.ensure_loaded("y")  # 3 GiB > 2.5: x (older) goes
        assert [m["state"] for m in mgr.listing()["data"]] == ["unloaded", "ready", "ready"]
        mgr.models["y"].last_used -= 100
        await mgr.ensure_loaded("x")  # y is now the least recently used
        assert [m["state"] for m in mgr.listing()["data"]] == ["ready", "unloaded", "ready"]
        rec = mgr.registry.dispatch("x", track=True)  # x busy: nothing idle to evict
        assert rec is not None
        with pytest.raises(ServiceUnavailableError) as exc:
            await mgr.ensure_loaded("y")
        assert exc.value.code == "memory_budget_exceeded" and "2.5 GiB" in exc.value.message
        assert mgr.listing()["memory"] == {"budget_bytes": int(2.5 * GiB), "used_bytes": 2 * GiB}
        await mgr.aclose()

    asyncio.run(run())


def test_bad_reload_changes_nothing_and_a_good_one_only_the_difference(tmp_path: Path) -> None:
    async def run() -> None:
        path = tmp_path / "c.yaml"
        models = [_entry("a"), _entry("b")]
        path.write_text(yaml.safe_dump({"models": models}))
        mgr, log = _manager(models, path=str(path))
        await mgr.start()
        path.write_text(yaml.safe_dump({"models": [_entry("a", work_mode="nope")]}))
        with pytest.raises(BadRequestError, match=r"models\[0\]\.a: work_mode 'nope' is unknown"):
            await mgr.reload()
        assert sorted(mgr.models) == ["a", "b"] and len(log) == 2
        changed = _entry("b")
        changed["b"]["model_config"]["n_ctx"] = 512
        path.write_text(yaml.safe_dump({"models": [changed, _entry("c", load="on_demand")]}))
        result = await mgr.reload()
        assert (result["added"], result["removed"], result["changed"]) == (["c"], ["a"], ["b"])
        assert log[2:] == ["stop a#0 inflight=0", "start b#1", "stop b#0 inflight=0"]  # b: new ready, then old drained
        assert mgr.listing()["data"][-1]["state"] == "unloaded"  # c waits for its first request
        await mgr.aclose()

    asyncio.run(run())


def test_a_failed_on_demand_load_is_tried_again_by_the_next_request() -> None:
    """A load that failed for good (an OOM, an engine error) is not reused: the next request
    retires the failed replica and starts a new one."""

    async def run() -> None:
        mgr, log = _manager([_entry("od", load="on_demand")])
        await mgr.start()
        await mgr.load("od", wait=False)
        bad = mgr.models["od"].replicas[0]
        mgr.registry.unregister(bad.worker_id)
        bad.alive, bad.failure = False, "failed to load: OutOfMemoryError"
        await mgr.ensure_loaded("od")  # before: 503 model_load_failed forever
        (fresh,) = mgr.models["od"].replicas
        assert fresh is not bad and mgr.ready(fresh)
        assert f"stop {bad.label} inflight=0" in log
        await mgr.aclose()

    asyncio.run(run())
