from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...protocol.openai import CompletionRequest
from ...transport.direct import client_transport
from ...web.limits import body_bytes

router = APIRouter()


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    return await request.app.state.generation.completion(body, body_bytes(request), client_transport(request.scope))
