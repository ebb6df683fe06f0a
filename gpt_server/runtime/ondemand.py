"""The gateway's controller client with on_demand models: a request for one that is not loaded
waits for its load instead of a 404, and every dispatch counts as a use (keep_alive)."""

from __future__ import annotations

import time

from ..controller.client import ControllerClient
from ..errors import GatewayError
from ..protocol.kinds import kind
from ..protocol.worker import DispatchReply, ModelEntryInfo, WorkerView
from .manager import ModelManager

__all__ = ["OnDemandController"]


class OnDemandController:
    def __init__(self, inner: ControllerClient, manager: ModelManager) -> None:
        self.inner = inner
        self.manager = manager
        self.registry = manager.registry
        self._listed_since: dict[str, int] = {}

    async def dispatch(
        self, model: str, exclude: list[str], capability: str | None = None, affinity: str | None = None
    ) -> DispatchReply:
        try:
            reply = await self.inner.dispatch(model, exclude, capability, affinity)
        except GatewayError as exc:
            name = self.manager.lookup(model) if exc.status in (404, 503) else None
            if name is None:
                raise
            await self.manager.ensure_loaded(name)  # bounded by serve_args.load_timeout
            reply = await self.inner.dispatch(model, exclude, capability, affinity)
        self.manager.touch(reply.model_name)
        return reply

    def done(self, worker_id: str) -> None:
        rec = self.registry.workers.get(worker_id)
        if rec is not None:
            self.manager.touch(rec.info.model_name)
        self.inner.done(worker_id)

    async def resolve(self, model: str, capability: str | None = None) -> str:
        if model and not self.registry.knows(model) and self.manager.lookup(model) is not None:
            return model  # not the catch-all's: it names a model that loads on demand
        return await self.inner.resolve(model, capability)

    async def models(self) -> list[ModelEntryInfo]:
        """The loaded models, and the on_demand ones not loaded now (``workers: 0``)."""
        out = await self.inner.models()
        listed = {m.id for m in out}
        for e in self.manager.on_demand_entries():
            caps = sorted(kind(e.kind).capabilities)
            for n in e.names:
                if n == "*" or n in listed:
                    continue
                created = self._listed_since.setdefault(n, int(time.time()))
                out.append(ModelEntryInfo(id=n, model_name=e.name, model_kind=e.kind, created=created, workers=0, capabilities=caps))
        return sorted(out, key=lambda m: m.id)

    async def workers(self) -> list[WorkerView]:
        return await self.inner.workers()

    async def report_failure(self, worker_id: str) -> None:
        await self.inner.report_failure(worker_id)

    async def aclose(self) -> None:
        await self.inner.aclose()
