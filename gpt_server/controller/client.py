"""How the gateway talks to the controller: in-process or over HTTP."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any, Protocol

import httpx

from ..errors import GatewayError, ServiceUnavailableError, error_from_body
from ..protocol.worker import SECRET_HEADER, DispatchReply, ModelEntryInfo, WorkerInfo, WorkerView
from ..transport.inproc import InProcessTransport, is_local
from .dispatch import make_policy
from .registry import Registry

__all__ = ["ControllerClient", "LocalController", "RemoteController"]


class ControllerClient(Protocol):
    async def dispatch(self, model: str, exclude: list[str], capability: str | None = None, affinity: str | None = None) -> DispatchReply: ...
    async def resolve(self, model: str, capability: str | None = None) -> str: ...
    async def models(self) -> list[ModelEntryInfo]: ...
    async def workers(self) -> list[WorkerView]: ...
    async def report_failure(self, worker_id: str) -> None: ...
    def done(self, worker_id: str) -> None: ...
    async def aclose(self) -> None: ...


class LocalController:
    """The registry lives in this process (the default deployment)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def dispatch(self, model: str, exclude: list[str], capability: str | None = None, affinity: str | None = None) -> DispatchReply:
        return self.registry.dispatch_or_raise(model, exclude, capability, track=True, affinity=affinity)

    def done(self, worker_id: str) -> None:
        self.registry.done(worker_id)

    async def resolve(self, model: str, capability: str | None = None) -> str:
        return self.registry.resolve(model, capability)

    async def models(self) -> list[ModelEntryInfo]:
        return self.registry.models()

    async def workers(self) -> list[WorkerView]:
        return [r.view() for r in self.registry.workers.values()]

    async def report_failure(self, worker_id: str) -> None:
        self.registry.report_failure(worker_id)

    async def aclose(self) -> None:
        return None


class RemoteController:
    """A controller in another process or on another host.

    The gateway keeps a mirror of the controller's worker list, refreshed in the
    background, and dispatches from it: no controller round trip per request, and
    traffic keeps flowing to known workers while the controller restarts.
    """

    def __init__(
        self,
        address: str,
        *,
        secret: str | None = None,
        timeout: float = 5.0,
        dispatch_method: str = "shortest_queue",
        refresh: float = 1.0,
        local: InProcessTransport | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.local = local  # in-process workers of this process (only these inproc:// addresses are callable)
        headers = {SECRET_HEADER: secret} if secret else {}
        self.client = httpx.AsyncClient(base_url=address.rstrip("/"), headers=headers, timeout=timeout, verify=verify)
        self.mirror = Registry(make_policy(dispatch_method))
        self.refresh = refresh
        self._loaded_at = -1e9
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def _call(self, method: str, path: str, json: dict[str, Any] | None = None) -> object:
        try:
            resp = await self.client.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError(f"controller unreachable: {type(exc).__name__}") from exc
        if resp.status_code != 200:
            try:
                body = resp.json()
            except ValueError:
                body = None
            raise error_from_body(resp.status_code, body)
        return resp.json()

    async def _reload(self) -> None:
        async with self._lock:
            data = await self._call("GET", "/controller/workers")
            assert isinstance(data, list)
            fresh = Registry(self.mirror.policy)
            old = self.mirror.workers
            for w in data:
                view = WorkerView.model_validate(w)
                if is_local(view.address) and not (self.local is not None and self.local.serves(view.address)):
                    continue  # in the process of another gateway: only that one can call it
                info = WorkerInfo.model_validate(view.model_dump(include=set(WorkerInfo.model_fields)))
                fresh.register(info)
                rec = fresh.workers[info.worker_id]
                prev = old.get(info.worker_id)
                rec.tracked = prev.tracked if prev is not None else 0  # our own requests carry over
                rec.observe_queue(view.queue_length)
                rec.healthy = view.healthy
                # for the dashboard
                rec.requests_total, rec.tokens_total, rec.rss_bytes = view.requests_total, view.tokens_total, view.rss_bytes
                rec.last_error, rec.state = view.last_error, view.state
                rec.draining = view.state == "draining"  # the serving controller is taking it out
                rec.expires = False  # expiry is the controller's job
            fresh.created.update(self.mirror.created)
            self.mirror.workers = fresh.workers  # the mirror (and its affinity pins) stays
            self.mirror.created = fresh.created
            self._loaded_at = time.monotonic()

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            try:
                await self._reload()
            except GatewayError:
                pass  # keep serving from the last known list

    async def _ensure(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._refresher())
        if time.monotonic() - self._loaded_at > 3 * self.refresh:
            try:
                await self._reload()
            except GatewayError:
                if not self.mirror.workers:
                    raise

    async def dispatch(self, model: str, exclude: list[str], capability: str | None = None, affinity: str | None = None) -> DispatchReply:
        """From the mirror; affinity pins are this gateway's (kept across refreshes)."""
        await self._ensure()
        try:
            return self.mirror.dispatch_or_raise(model, exclude, capability, track=True, affinity=affinity)
        except GatewayError as exc:
            if exc.status != 404:
                raise
            await self._reload()  # a model we have not seen yet: ask once more
            return self.mirror.dispatch_or_raise(model, exclude, capability, track=True, affinity=affinity)

    def done(self, worker_id: str) -> None:
        self.mirror.done(worker_id)

    async def resolve(self, model: str, capability: str | None = None) -> str:
        await self._ensure()
        if model and not self.mirror.knows(model):
            await self._reload()  # perhaps a model we have not seen yet
        return self.mirror.resolve(model, capability)

    async def models(self) -> list[ModelEntryInfo]:
        await self._ensure()
        return self.mirror.models()

    async def workers(self) -> list[WorkerView]:
        await self._ensure()
        return [r.view() for r in self.mirror.workers.values()]

    async def report_failure(self, worker_id: str) -> None:
        self.mirror.report_failure(worker_id)
        try:
            await self._call("POST", "/controller/report_failure", {"worker_id": worker_id})
        except GatewayError:
            pass

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.client.aclose()
