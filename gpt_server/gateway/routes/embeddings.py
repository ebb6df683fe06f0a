"""POST /v1/embeddings (OpenAI; Jina's image items and vLLM's ``messages`` too)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ...errors import NotFoundError
from ...protocol.embeddings import EMBED, EMBED_IMAGE, EmbeddingRequest, embed_payload, has_images
from ...web.responses import FastJSONResponse
from ..embed_ids import openai_ids_as_text
from ..invoke import call_json, resolve_model

__all__ = ["router"]

router = APIRouter()


async def _resolve(request: Request, model: str, images: bool) -> str:
    """The model; with images and no name, one that embeds images is preferred (failing that,
    the default embedding model answers that it takes text only)."""
    if images and not model:
        try:
            return await resolve_model(request, model, EMBED_IMAGE)
        except NotFoundError:
            pass
    return await resolve_model(request, model, EMBED)


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request) -> FastJSONResponse:
    payload = embed_payload(body)
    body.model = await _resolve(request, body.model, has_images(payload))
    if request.app.state.config.serve_args.embedding_token_ids == "auto" and any(isinstance(x, list) for x in payload.inputs):
        payload.inputs = await asyncio.to_thread(openai_ids_as_text, payload.inputs)
    result = await call_json(request, body.model, EMBED, payload)
    result["model"] = body.model
    return FastJSONResponse(result)  # rendered once by orjson, no response-model pass
