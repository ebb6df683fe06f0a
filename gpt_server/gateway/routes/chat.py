from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...protocol.openai import ChatCompletionRequest
from ...transport.direct import client_transport
from ...web.limits import body_bytes

router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    return await request.app.state.generation.chat(body, body_bytes(request), client_transport(request.scope))
