"""POST /v1/embeddings (OpenAI)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ...protocol.embeddings import EMBED, EmbeddingRequest, embed_payload
from ...web.responses import FastJSONResponse
from ..embed_ids import openai_ids_as_text
from ..invoke import call_json, resolve_model

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request) -> FastJSONResponse:
    body.model = await resolve_model(request, body.model, EMBED)
    if request.app.state.config.serve_args.embedding_token_ids == "auto" and not all(isinstance(x, str) for x in body.input):
        body.input = await asyncio.to_thread(openai_ids_as_text, body.input)
    result = await call_json(request, body.model, EMBED, embed_payload(body))
    result["model"] = body.model
    return FastJSONResponse(result)  # rendered once by orjson, no response-model pass
