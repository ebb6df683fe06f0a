"""POST /v1/moderations (OpenAI) and POST /v1/classify (raw label scores)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...protocol.moderation import (
    CLASSIFY,
    MODERATE,
    ClassifyRequest,
    ModerationRequest,
    classify_payload,
)
from ...web.responses import FastJSONResponse
from ..convert import new_id
from ..invoke import call_json, resolve_model

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/moderations")
async def create_moderation(body: ModerationRequest, request: Request) -> FastJSONResponse:
    model = await resolve_model(request, body.model, MODERATE)
    result = await call_json(request, model, MODERATE, classify_payload(body.input, body.threshold))
    return FastJSONResponse({"id": new_id("modr"), "model": model, **result})


@router.post("/v1/classify")
async def classify(body: ClassifyRequest, request: Request) -> FastJSONResponse:
    body.model = await resolve_model(request, body.model, CLASSIFY)
    result = await call_json(request, body.model, CLASSIFY, classify_payload(body.input))
    return FastJSONResponse({"id": new_id("classify"), "model": body.model, "object": "list", **result})
