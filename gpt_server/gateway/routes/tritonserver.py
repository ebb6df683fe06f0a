"""``POST /generate`` as fastapi_tritonserver defines it, served by the chat path (any chat
model; the ``triton`` engine is the one it was made for). LMDeploy's ``/generate`` shares the
path: routes/lmdeploy.py owns the route and hands a body in this shape to ``triton_generate``."""

from __future__ import annotations

import uuid

from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError

from ...errors import BadRequestError
from ...protocol.openai import CHAT, ChatCompletionRequest
from ...protocol.tritonserver import TritonGenerateRequest, generate_chat_body
from ...web.error_handlers import validation_message
from ...web.limits import body_bytes
from ...web.responses import FastJSONResponse

__all__ = ["triton_generate", "TRITON_ONLY_KEYS"]

# fields only fastapi_tritonserver's /generate has (LMDeploy's has input_ids, max_tokens, …)
TRITON_ONLY_KEYS = frozenset({"max_output_len", "num_beams", "images", "uuid"})


async def triton_generate(body: TritonGenerateRequest, request: Request) -> Response:
    if body.num_beams > 1:
        raise BadRequestError("beam search (num_beams > 1) is not supported", param="num_beams")
    if body.stream:
        raise BadRequestError("/generate answers whole; stream with /v1/chat/completions", param="stream")
    model = await request.app.state.controller.resolve(body.model, CHAT)
    try:
        creq = ChatCompletionRequest.model_validate(generate_chat_body(body, model))
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors()))
        raise BadRequestError(message, param=param) from None
    run = await request.app.state.generation.start_chat(creq, body_bytes(request), whole=True)
    choices, _ = await run.collect()
    return FastJSONResponse({"text": "".join(choices[0].text), "id": body.uuid or str(uuid.uuid4())})
