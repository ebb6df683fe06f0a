"""Anthropic Messages API: ``POST /v1/messages`` (whole or streamed) and
``/v1/messages/count_tokens``, a thin translation onto the chat path
(``GenerationService.start_chat``). Errors on these routes are in Anthropic's shape
(``web.error_handlers``); streams name each event as the anthropic SDK expects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from ...errors import BadRequestError, GatewayError
from ...protocol.anthropic import CountTokensRequest, MessagesRequest, chat_fields, to_chat
from ...protocol.openai import ChatMessage, Tool
from ...protocol.tokenize import TOKENIZE, TokenizeRequest, tokenize_payload
from ...protocol.worker import DeltaEvent, ErrorEvent, FinishEvent, UsageEvent
from ...web.error_handlers import anthropic_error, validation_message
from ...web.limits import body_bytes
from ...web.responses import FastJSONResponse
from ..invoke import call_json, resolve_model
from ..serving import ChatRun, raise_error
from ..sse import SSEResponse

__all__ = ["router", "named_frame"]

router = APIRouter()

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal", "abort": "end_turn"}


def named_frame(event: Any) -> bytes:
    """One Anthropic SSE event: ``event: <type>`` then its JSON."""
    data = event.model_dump() if isinstance(event, BaseModel) else event
    return b"event: " + str(data.get("type", "message")).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _stream_error(exc: GatewayError) -> dict[str, Any]:
    return anthropic_error(exc.status, str(exc))


def _validated(cls: type[BaseModel], fields: dict[str, Any]) -> Any:
    try:
        return cls.model_validate(fields)
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors()))
        raise BadRequestError(message, param=param) from None


def _stop_reason(finish: str | None, req: MessagesRequest) -> tuple[str, str | None]:
    """Anthropic's stop reason and stop sequence. The worker says only "stop": with stop
    sequences given it is reported as ``stop_sequence`` (the sequence itself when just one
    was given), else ``end_turn``."""
    reason = _STOP.get(finish or "stop", "end_turn")
    if reason == "end_turn" and finish == "stop" and req.stop_sequences:
        return "stop_sequence", req.stop_sequences[0] if len(req.stop_sequences) == 1 else None
    return reason, None


def _input(arguments: str) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _message_id(run: ChatRun) -> str:
    return "msg_" + run.request_id.split("-", 1)[-1]


@router.post("/v1/messages")
async def create_message(body: MessagesRequest, request: Request) -> Response:
    chat_req = to_chat(body)
    run = await request.app.state.generation.start_chat(chat_req, body_bytes(request), id_prefix="msg")
    if body.stream:
        service = request.app.state.generation
        return SSEResponse(
            _events(run, body),
            timeout=service.timeout,
            deadline=run.deadline,
            on_close=run.aclose,
            done=None,
            error_event=_stream_error,
            encode=named_frame,
        )
    choices, usage = await run.collect()
    c = choices[0]
    content: list[dict[str, Any]] = []
    if c.reasoning:
        content.append({"type": "thinking", "thinking": "".join(c.reasoning), "signature": ""})
    text = "".join(c.text)
    if text or not c.tool_calls:
        content.append({"type": "text", "text": text})
    for i in sorted(c.tool_calls):
        call = c.tool_calls[i]
        content.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": _input(call["function"]["arguments"])})
    reason, seq = _stop_reason(c.finish_reason, body)
    return FastJSONResponse(
        {
            "id": _message_id(run),
            "type": "message",
            "role": "assistant",
            "model": run.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": seq,
            "usage": _usage(usage.prompt_tokens, usage.completion_tokens),
        }
    )


async def _events(run: ChatRun, req: MessagesRequest) -> AsyncIterator[list[dict[str, Any]]]:
    """The Anthropic event sequence: message_start, per block content_block_start / delta /
    stop (thinking, text, tool_use), message_delta (stop reason, usage), message_stop."""
    start = {
        "type": "message_start",
        "message": {
            "id": _message_id(run),
            "type": "message",
            "role": "assistant",
            "model": run.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(0, 0),
        },
    }
    head: list[dict[str, Any]] = [start]
    index = -1
    kind: str | None = None  # the open block's type
    call_index: int | None = None
    finish: str | None = None
    usage = UsageEvent(prompt_tokens=0, completion_tokens=0)

    def open_block(out: list[dict[str, Any]], block: dict[str, Any]) -> None:
        nonlocal index, kind
        if kind is not None:
            out.append({"type": "content_block_stop", "index": index})
        index += 1
        kind = block["type"]
        out.append({"type": "content_block_start", "index": index, "content_block": block})

    batches = run.batches()
    try:
        async for batch in batches:
            out, head = head, []
            for ev in batch:
                if isinstance(ev, ErrorEvent):
                    if out:
                        yield out
                    raise_error(ev)
                if isinstance(ev, DeltaEvent):
                    if ev.reasoning:
                        if kind != "thinking":
                            open_block(out, {"type": "thinking", "thinking": "", "signature": ""})
                        out.append({"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": ev.reasoning}})
                    if ev.text:
                        if kind != "text":
                            open_block(out, {"type": "text", "text": ""})
                        out.append({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": ev.text}})
                    for d in ev.tool_calls or ():
                        if d.id or kind != "tool_use" or d.index != call_index:
                            open_block(out, {"type": "tool_use", "id": d.id or f"toolu_{d.index}", "name": d.name, "input": {}})
                            call_index = d.index
                        if d.arguments:
                            out.append({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": d.arguments}})
                elif isinstance(ev, FinishEvent):
                    finish = ev.finish_reason
                elif isinstance(ev, UsageEvent):
                    usage = ev
            if out:
                yield out
        out = head
        if kind is None:  # nothing generated: one empty text block, as Anthropic sends
            open_block(out, {"type": "text", "text": ""})
        out.append({"type": "content_block_stop", "index": index})
        reason, seq = _stop_reason(finish, req)
        out.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": seq},
                "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens},
            }
        )
        out.append({"type": "message_stop"})
        yield out
    finally:
        await batches.aclose()  # type: ignore[attr-defined]
        await run.aclose()


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request) -> FastJSONResponse:
    fields = chat_fields(body)
    tok = _validated(
        TokenizeRequest,
        {
            "model": body.model,
            "messages": [_validated(ChatMessage, m) for m in fields["messages"]],
            "tools": [_validated(Tool, t) for t in fields.get("tools") or []] or None,
            "enable_thinking": fields.get("enable_thinking"),
        },
    )
    tok.model = await resolve_model(request, tok.model, TOKENIZE)
    result = await call_json(request, tok.model, TOKENIZE, tokenize_payload(tok))
    return FastJSONResponse({"input_tokens": int(result["count"])})
