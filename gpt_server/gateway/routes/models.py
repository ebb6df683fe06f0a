from __future__ import annotations

from fastapi import APIRouter, Request

from ...errors import NotFoundError

router = APIRouter()


def _card(m) -> dict:  # noqa: ANN001
    return {
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": "gpt-server",
        "root": m.model_name,
        "parent": m.parent,
        "kind": m.model_kind,
        "capabilities": m.capabilities,
        "max_model_len": m.context_length,
        "workers": m.workers,
    }


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    models = await request.app.state.controller.models()
    return {"object": "list", "data": [_card(m) for m in models]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict:
    for m in await request.app.state.controller.models():
        if m.id == model_id:
            return _card(m)
    raise NotFoundError(f"The model '{model_id}' does not exist", param="model")
