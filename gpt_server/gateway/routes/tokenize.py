"""POST /tokenize and /detokenize (vLLM's shapes; also under /v1)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...protocol.tokenize import (
    DETOKENIZE,
    TOKENIZE,
    DetokenizeRequest,
    TokenizeRequest,
    detokenize_payload,
    tokenize_payload,
)
from ...web.responses import FastJSONResponse
from ..invoke import call_json, resolve_model

__all__ = ["router"]

router = APIRouter()


@router.post("/tokenize")
@router.post("/v1/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> FastJSONResponse:
    body.model = await resolve_model(request, body.model, TOKENIZE)
    return FastJSONResponse(await call_json(request, body.model, TOKENIZE, tokenize_payload(body)))


@router.post("/detokenize")
@router.post("/v1/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> FastJSONResponse:
    body.model = await resolve_model(request, body.model, DETOKENIZE)
    return FastJSONResponse(await call_json(request, body.model, DETOKENIZE, detokenize_payload(body)))
