"""Anthropic Messages API: ``POST /v1/messages`` (whole or streamed) and
``/v1/messages/count_tokens``, a thin translation onto the chat path
(``GenerationService.start_chat``). Errors on these routes are in Anthropic's shape
(``web.error_handlers``); streams name each event as the anthropic SDK expects."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from ...errors import BadRequestError, GatewayError
from ...protocol.anthropic import CountTokensRequest, MessagesRequest, chat_fields, to_chat
from ...protocol.openai import ChatMessage, Tool
from ...protocol.tokenize import TOKENIZE, TokenizeRequest, tokenize_payload
from ...protocol.worker import DeltaEvent
from ...web.error_handlers import anthropic_error, validation_message
from ...web.limits import body_bytes
from ...web.responses import FastJSONResponse
from ..invoke import call_json, resolve_model
from ..serving import ChatRun, RunTranslator

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


def _usage(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    read = min(cached or 0, prompt)  # Anthropic counts cache reads apart from input_tokens
    return {
        "input_tokens": prompt - read,
        "output_tokens": completion,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": read,
    }


def _message_id(run: ChatRun) -> str:
    return "msg_" + run.request_id.split("-", 1)[-1]


@router.post("/v1/messages")
async def create_message(body: MessagesRequest, request: Request) -> Response:
    chat_req = to_chat(body)
    run = await request.app.state.generation.start_chat(chat_req, body_bytes(request), id_prefix="msg", whole=not body.stream)
    if body.stream:
        return run.streamed(run.translate(_MessageStream(run, body)), done=None, error_event=_stream_error, encode=named_frame)
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
            "usage": _usage(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens),
        }
    )


class _MessageStream(RunTranslator):
    """The Anthropic event sequence: message_start, per block content_block_start / delta /
    stop (thinking, text, tool_use), message_delta (stop reason, usage), message_stop."""

    def __init__(self, run: ChatRun, req: MessagesRequest) -> None:
        super().__init__()
        self.run, self.req = run, req
        self.index = -1
        self.kind: str | None = None  # the open block's type
        self.call_index: int | None = None

    def head(self) -> list[Any]:
        message: dict[str, Any] = {
            "id": _message_id(self.run),
            "type": "message",
            "role": "assistant",
            "model": self.run.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(0, 0),
        }
        return [{"type": "message_start", "message": message}]

    def _open(self, out: list[Any], block: dict[str, Any]) -> None:
        if self.kind is not None:
            out.append({"type": "content_block_stop", "index": self.index})
        self.index += 1
        self.kind = block["type"]
        out.append({"type": "content_block_start", "index": self.index, "content_block": block})

    def on_delta(self, ev: DeltaEvent, out: list[Any]) -> None:
        if ev.reasoning:
            if self.kind != "thinking":
                self._open(out, {"type": "thinking", "thinking": "", "signature": ""})
            out.append({"type": "content_block_delta", "index": self.index, "delta": {"type": "thinking_delta", "thinking": ev.reasoning}})
        if ev.text:
            if self.kind != "text":
                self._open(out, {"type": "text", "text": ""})
            out.append({"type": "content_block_delta", "index": self.index, "delta": {"type": "text_delta", "text": ev.text}})
        for d in ev.tool_calls or ():
            if d.id or self.kind != "tool_use" or d.index != self.call_index:
                self._open(out, {"type": "tool_use", "id": d.id or f"toolu_{d.index}", "name": d.name, "input": {}})
                self.call_index = d.index
            if d.arguments:
                out.append({"type": "content_block_delta", "index": self.index, "delta": {"type": "input_json_delta", "partial_json": d.arguments}})

    def tail(self, out: list[Any]) -> None:
        if self.kind is None:  # nothing generated: one empty text block, as Anthropic sends
            self._open(out, {"type": "text", "text": ""})
        out.append({"type": "content_block_stop", "index": self.index})
        reason, seq = _stop_reason(self.finish_reason, self.req)
        u = _usage(self.usage.prompt_tokens, self.usage.completion_tokens, self.usage.cached_tokens)
        usage = {k: u[k] for k in ("input_tokens", "output_tokens", "cache_read_input_tokens")}
        out.append({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": seq}, "usage": usage})
        out.append({"type": "message_stop"})


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
