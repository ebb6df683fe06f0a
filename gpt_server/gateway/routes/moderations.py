"""POST /v1/moderations (OpenAI) and POST /v1/classify (raw label scores)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...errors import NotFoundError
from ...protocol.moderation import (
    CLASSIFY,
    MODERATE,
    ClassifyRequest,
    ModerationRequest,
    classify_payload,
)
from ...web.responses import FastJSONResponse
from ..convert import new_id
from ..invoke import call_json

__all__ = ["router"]

router = APIRouter()


async def _default_moderation_model(request: Request) -> str:
    for m in await request.app.state.controller.models():
        if MODERATE in m.capabilities:
            return m.id
    raise NotFoundError("no moderation model is being served; name one in 'model'", param="model")


@router.post("/v1/moderations")
async def create_moderation(body: ModerationRequest, request: Request) -> FastJSONResponse:
    model = body.model or await _default_moderation_model(request)
    result = await call_json(request, model, MODERATE, classify_payload(body.input, body.threshold))
    return FastJSONResponse({"id": new_id("modr"), "model": model, **result})


@router.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request) -> FastJSONResponse:
    result = await call_json(request, body.model, CLASSIFY, classify_payload(body.input))
    return FastJSONResponse({"id": new_id("classify"), "model": body.model, "object": "list", **result})
