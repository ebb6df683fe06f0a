"""POST /v1/embeddings (OpenAI; Jina's image items and vLLM's ``messages`` too)."""

from __future__ import annotations

import asyncio
import base64
import struct

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...errors import BadRequestError, NotFoundError
from ...protocol.embeddings import EMBED, EMBED_IMAGE, EmbeddingRequest, embed_payload, has_images
from ...protocol.rerank import RERANK, RerankPayload
from ...web.responses import FastJSONResponse
from ..embed_ids import openai_ids_as_text
from ..invoke import call_bytes, call_json, resolve_model

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


async def _rerank_as_embeddings(body: EmbeddingRequest, query: str, request: Request) -> FastJSONResponse:
    """gpt_server's rerank through the embeddings call: ``input`` is the documents, ``query``
    rides in the body, and each document's embedding is ``[relevance score]`` (rounded to 6
    places, as gpt_server does), in input order."""
    docs = body.input
    if not docs or not all(isinstance(d, str) for d in docs):
        raise BadRequestError("with 'query' (rerank through embeddings), input must be a list of document strings", param="input")
    if body.dimensions is not None or body.messages is not None:
        raise BadRequestError("'query' (rerank through embeddings) takes neither dimensions nor messages", param="query")
    body.model = await resolve_model(request, body.model, RERANK)
    payload = RerankPayload(query=query, documents=docs, return_documents=False)
    result = await call_json(request, body.model, RERANK, payload)
    scores = [0.0] * len(docs)
    for r in result["results"]:
        scores[int(r["index"])] = round(float(r["relevance_score"]), 6)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(struct.pack("<f", s)).decode() if body.encoding_format == "base64" else [s],
        }
        for i, s in enumerate(scores)
    ]
    usage = result.get("usage") or {"prompt_tokens": 0, "total_tokens": 0}
    return FastJSONResponse({"object": "list", "data": data, "model": body.model, "usage": usage})


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    if body.query is not None:
        return await _rerank_as_embeddings(body, body.query, request)
    payload = embed_payload(body)
    body.model = await _resolve(request, body.model, has_images(payload))
    if request.app.state.config.serve_args.embedding_token_ids == "auto" and any(isinstance(x, list) for x in payload.inputs):
        payload.inputs = await asyncio.to_thread(openai_ids_as_text, payload.inputs)
    # the worker's body as it sent it, ``model`` stamped (the name resolved here): no parse and render again
    return Response(await call_bytes(request, body.model, EMBED, payload), media_type="application/json")
