"""POST /v1/embeddings (OpenAI)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...protocol.embeddings import EMBED, EmbeddingRequest, embed_payload
from ...web.responses import FastJSONResponse
from ..invoke import call_json, resolve_model

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request) -> FastJSONResponse:
    body.model = await resolve_model(request, body.model, EMBED)
    result = await call_json(request, body.model, EMBED, embed_payload(body))
    result["model"] = body.model
    return FastJSONResponse(result)  # rendered once by orjson, no response-model pass
