"""How the gateway talks to the controller: in-process or over HTTP."""

from __future__ import annotations

from typing import Protocol

import httpx

from ..errors import GatewayError, ServiceUnavailableError, error_from_body
from ..protocol.worker import SECRET_HEADER, DispatchReply, DispatchRequest, ModelEntryInfo
from .app import worker_view
from .registry import Registry

__all__ = ["ControllerClient", "LocalController", "RemoteController"]


class ControllerClient(Protocol):
    async def dispatch(self, model: str, exclude: list[str], capability: str | None = None) -> DispatchReply: ...
    async def models(self) -> list[ModelEntryInfo]: ...
    async def workers(self) -> list[dict]: ...
    async def report_failure(self, worker_id: str) -> None: ...
    async def aclose(self) -> None: ...


class LocalController:
    """The registry lives in this process (the default deployment)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def dispatch(self, model: str, exclude: list[str], capability: str | None = None) -> DispatchReply:
        return self.registry.dispatch_or_raise(model, exclude, capability)

    async def models(self) -> list[ModelEntryInfo]:
        return self.registry.models()

    async def workers(self) -> list[dict]:
        return [worker_view(r) for r in self.registry.workers.values()]

    async def report_failure(self, worker_id: str) -> None:
        self.registry.report_failure(worker_id)

    async def aclose(self) -> None:
        return None


class RemoteController:
    """A controller in another process or on another host."""

    def __init__(self, address: str, *, secret: str | None = None, timeout: float = 5.0) -> None:
        headers = {SECRET_HEADER: secret} if secret else {}
        self.client = httpx.AsyncClient(base_url=address.rstrip("/"), headers=headers, timeout=timeout)

    async def _call(self, method: str, path: str, json: dict | None = None) -> object:
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

    async def dispatch(self, model: str, exclude: list[str], capability: str | None = None) -> DispatchReply:
        body = DispatchRequest(model=model, exclude=exclude, capability=capability).model_dump()
        data = await self._call("POST", "/controller/dispatch", body)
        return DispatchReply.model_validate(data)

    async def models(self) -> list[ModelEntryInfo]:
        data = await self._call("GET", "/controller/models")
        assert isinstance(data, list)
        return [ModelEntryInfo.model_validate(d) for d in data]

    async def workers(self) -> list[dict]:
        data = await self._call("GET", "/controller/workers")
        assert isinstance(data, list)
        return data

    async def report_failure(self, worker_id: str) -> None:
        try:
            await self._call("POST", "/controller/report_failure", {"worker_id": worker_id})
        except GatewayError:
            pass

    async def aclose(self) -> None:
        await self.client.aclose()
