"""POST /v1/rerank, /rerank (Cohere v1, Jina, Dify) and /v2/rerank (Cohere v2)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...protocol.rerank import RERANK, RerankRequest, rerank_payload
from ...web.responses import FastJSONResponse
from ..convert import new_id
from ..invoke import call_json, resolve_model

__all__ = ["router"]

router = APIRouter()


async def _rerank(body: RerankRequest, request: Request, *, return_documents: bool) -> FastJSONResponse:
    payload = rerank_payload(body, default_return_documents=return_documents)
    body.model = await resolve_model(request, body.model, RERANK)
    result = await call_json(request, body.model, RERANK, payload)
    return FastJSONResponse({"id": new_id("rerank"), "model": body.model, **result})


@router.post("/v1/rerank")
@router.post("/rerank")
async def rerank_v1(body: RerankRequest, request: Request) -> FastJSONResponse:
    return await _rerank(body, request, return_documents=True)


@router.post("/v2/rerank")
async def rerank_v2(body: RerankRequest, request: Request) -> FastJSONResponse:
    return await _rerank(body, request, return_documents=False)
