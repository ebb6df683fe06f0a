"""The admin API of run-time model management (behind ``serve_args.admin_keys``).

GET    /admin/models                          every configured model, state per replica
POST   /admin/models                          load a model from a config entry {name: {...}}
POST   /admin/models/{name}/load              load a configured model that is unloaded
DELETE /admin/models/{name}                   unload: drain in-flight requests, then stop
POST   /admin/models/{name}/scale             {"replicas": n}
POST   /admin/models/{name}/replicas/{i}/restart   rolling: a new replica ready, then the old drained
POST   /admin/reload                          read the config file again, apply the difference
POST   /admin/models/{name}/adapters          {"name", "path"}: load a LoRA adapter on every replica
DELETE /admin/models/{name}/adapters/{adapter}   unload a LoRA adapter loaded at run time

The routes call the ``ModelAdmin`` that ``serve`` hands to ``build_app`` (its model manager, in
this process); a gateway started alone has none and answers 501.
"""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ...errors import GatewayError
from ...protocol.worker import ADAPTER_NAME_PATTERN, MAX_ADAPTER_PATH

__all__ = ["admin_router", "ModelAdmin"]

admin_router = APIRouter()

Name = Annotated[str, Path(max_length=200)]
Wait = Annotated[bool, Query(description="answer once the model is ready (bounded by serve_args.load_timeout)")]


class ModelAdmin(Protocol):
    def listing(self) -> dict[str, Any]: ...
    async def add(self, item: Any, *, wait: bool = True) -> dict[str, Any]: ...
    async def load(self, name: str, *, wait: bool = True) -> dict[str, Any]: ...
    async def unload(self, name: str) -> dict[str, Any]: ...
    async def scale(self, name: str, replicas: int, *, wait: bool = True) -> dict[str, Any]: ...
    async def restart(self, name: str, index: int) -> dict[str, Any]: ...
    async def reload(self) -> dict[str, Any]: ...
    async def load_adapter(self, model: str, name: str, path: str) -> dict[str, Any]: ...
    async def unload_adapter(self, model: str, name: str) -> dict[str, Any]: ...


class AdminUnavailable(GatewayError):
    status = 501
    openai_type = "invalid_request_error"
    default_code = "admin_api_unavailable"


class ScaleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicas: int = Field(ge=0, le=64, description="replicas wanted (0 = unloaded)")


class AdapterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        pattern=ADAPTER_NAME_PATTERN, max_length=128,
        description="the adapter's model id: letters, digits and . _ : / @ + - (1-128 characters), no model's name or alias",
    )
    path: str = Field(
        min_length=2, max_length=MAX_ADAPTER_PATH, pattern=r"^/",
        description="absolute path of the adapter's directory (PEFT format) on the hosts of the model's replicas",
    )


def _admin(request: Request) -> ModelAdmin:
    manager: ModelAdmin | None = getattr(request.app.state, "manager", None)
    if manager is None:
        raise AdminUnavailable("this gateway runs without a launcher (gpt-server gateway): models are managed by `gpt-server serve`")
    return manager


@admin_router.get("/admin/models")
async def list_models(request: Request) -> dict[str, Any]:
    return _admin(request).listing()


@admin_router.post("/admin/models")
async def add_model(request: Request, entry: Annotated[dict[str, Any], Body()], wait: Wait = True) -> dict[str, Any]:
    return await _admin(request).add(entry, wait=wait)


@admin_router.post("/admin/models/{name}/load")
async def load_model(request: Request, name: Name, wait: Wait = True) -> dict[str, Any]:
    return await _admin(request).load(name, wait=wait)


@admin_router.delete("/admin/models/{name}")
async def unload_model(request: Request, name: Name) -> dict[str, Any]:
    return await _admin(request).unload(name)


@admin_router.post("/admin/models/{name}/scale")
async def scale_model(request: Request, name: Name, body: ScaleBody, wait: Wait = True) -> dict[str, Any]:
    return await _admin(request).scale(name, body.replicas, wait=wait)


@admin_router.post("/admin/models/{name}/replicas/{index}/restart")
async def restart_replica(request: Request, name: Name, index: Annotated[int, Path(ge=0, le=1024)]) -> dict[str, Any]:
    return await _admin(request).restart(name, index)


@admin_router.post("/admin/reload")
async def reload_config(request: Request) -> dict[str, Any]:
    return await _admin(request).reload()


@admin_router.post("/admin/models/{name}/adapters")
async def load_adapter(request: Request, name: Name, body: AdapterBody) -> dict[str, Any]:
    return await _admin(request).load_adapter(name, body.name, body.path)


@admin_router.delete("/admin/models/{name}/adapters/{adapter:path}")
async def unload_adapter(request: Request, name: Name, adapter: Annotated[str, Path(max_length=128)]) -> dict[str, Any]:
    return await _admin(request).unload_adapter(name, adapter)
