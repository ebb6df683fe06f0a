"""Anthropic Messages API request schemas (``/v1/messages``, ``/v1/messages/count_tokens``)
and their translation onto the chat path (``ChatCompletionRequest``).

Bounded like the OpenAI schemas (``LIMITS``); what the chat path cannot do (server tools,
images inside tool results) is refused with a 400 naming the field."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, ValidationError

from ..errors import BadRequestError
from .openai import LIMITS, ChatCompletionRequest, ModelName, OpenAIBaseModel, function_tool

__all__ = [
    "MessagesRequest",
    "CountTokensRequest",
    "to_chat",
]

class _Base(OpenAIBaseModel):
    pass


class TextBlock(_Base):
    type: Literal["text"]
    text: str = Field(max_length=LIMITS.max_text_chars)


class Base64Source(_Base):
    type: Literal["base64"]
    media_type: str = Field(max_length=128)
    data: str


class URLSource(_Base):
    type: Literal["url"]
    url: str = Field(max_length=65536)


class ImageBlock(_Base):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]


class ToolUseBlock(_Base):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    input: dict[str, Any] = {}


class ToolResultBlock(_Base):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: str | Annotated[list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]], Field(max_length=LIMITS.max_content_parts)] = ""
    is_error: bool | None = None


class ThinkingBlock(_Base):
    type: Literal["thinking"]
    thinking: str = Field(max_length=LIMITS.max_text_chars)
    signature: str | None = None


class RedactedThinkingBlock(_Base):
    type: Literal["redacted_thinking"]
    data: str = ""


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class Message(_Base):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[Block], Field(max_length=LIMITS.max_content_parts)]


class ToolDef(_Base):
    type: str | None = None  # "custom" or absent; server tools (web_search …) are refused
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    description: str | None = Field(default=None, max_length=16384)
    input_schema: dict[str, Any] | None = None


class ToolChoice(_Base):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, max_length=64)
    disable_parallel_tool_use: bool | None = None


class Thinking(_Base):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=0, le=LIMITS.max_tokens)


class Metadata(_Base):
    user_id: str | None = Field(default=None, max_length=512)


class _Common(_Base):
    model: ModelName = ""
    messages: list[Message] = Field(min_length=1, max_length=LIMITS.max_messages)
    system: str | Annotated[list[TextBlock], Field(max_length=LIMITS.max_content_parts)] | None = None
    tools: list[ToolDef] | None = Field(default=None, max_length=LIMITS.max_tools)
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class CountTokensRequest(_Common):
    pass


class MessagesRequest(_Common):
    max_tokens: int = Field(ge=1, le=LIMITS.max_tokens)
    stop_sequences: list[Annotated[str, Field(min_length=1, max_length=LIMITS.max_stop_len)]] | None = Field(
        default=None, max_length=LIMITS.max_stop
    )
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=100_000)
    metadata: Metadata | None = None


# ---- translation ----------------------------------------------------------------------------
def _image_part(block: ImageBlock) -> dict[str, Any]:
    src = block.source
    url = src.url if isinstance(src, URLSource) else f"data:{src.media_type};base64,{src.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_text(block: ToolResultBlock, where: str) -> str:
    if isinstance(block.content, str):
        return block.content
    texts = []
    for b in block.content:
        if isinstance(b, ImageBlock):
            raise BadRequestError(f"{where}: images inside a tool_result are not supported", param=where)
        texts.append(b.text)
    return "\n".join(texts)


def _messages(req: _Common) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.system:
        system = req.system if isinstance(req.system, str) else "\n".join(b.text for b in req.system)
        out.append({"role": "system", "content": system})
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        if m.role == "user":
            parts: list[dict[str, Any]] = []
            for j, b in enumerate(m.content):
                where = f"messages.{i}.content.{j}"
                if isinstance(b, ToolResultBlock):
                    out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": _tool_result_text(b, where)})
                elif isinstance(b, TextBlock):
                    parts.append({"type": "text", "text": b.text})
                elif isinstance(b, ImageBlock):
                    parts.append(_image_part(b))
                else:
                    raise BadRequestError(f"{where}: a '{b.type}' block may not be sent in a user message", param=where)
            if parts:
                out.append({"role": "user", "content": parts})
            continue
        texts: list[str] = []
        reasoning: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, b in enumerate(m.content):
            where = f"messages.{i}.content.{j}"
            if isinstance(b, TextBlock):
                texts.append(b.text)
            elif isinstance(b, ThinkingBlock):
                reasoning.append(b.thinking)
            elif isinstance(b, ToolUseBlock):
                calls.append({"id": b.id, "type": "function", "function": {"name": b.name, "arguments": orjson.dumps(b.input).decode()}})
            elif isinstance(b, RedactedThinkingBlock):
                continue
            else:
                raise BadRequestError(f"{where}: a '{b.type}' block may not be sent in an assistant message", param=where)
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
        if calls:
            msg["tool_calls"] = calls
        if reasoning:
            msg["reasoning_content"] = "".join(reasoning)
        out.append(msg)
    return out


def _tools(req: _Common) -> list[dict[str, Any]] | None:
    if not req.tools:
        return None
    tools = []
    for i, t in enumerate(req.tools):
        if t.type not in (None, "custom"):
            raise BadRequestError(f"tools.{i}.type: server tool '{t.type}' is not supported; only custom tools are", param=f"tools.{i}.type")
        tools.append(function_tool(t.name, t.input_schema, t.description))
    return tools


def _tool_choice(req: _Common) -> Any:
    tc = req.tool_choice
    if tc is None:
        return None
    if tc.type == "tool":
        if not tc.name:
            raise BadRequestError("tool_choice.name: required when tool_choice.type is 'tool'", param="tool_choice.name")
        return {"type": "function", "function": {"name": tc.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[tc.type]


def _thinking(req: _Common) -> bool | None:
    if req.thinking is None:
        return None
    return req.thinking.type != "disabled"


def chat_fields(req: _Common) -> dict[str, Any]:
    """The chat-request fields messages, tools and thinking come to (also for count_tokens)."""
    fields: dict[str, Any] = {"model": req.model, "messages": _messages(req)}
    tools = _tools(req)
    if tools:
        fields["tools"] = tools
        choice = _tool_choice(req)
        if choice is not None:
            fields["tool_choice"] = choice
        if req.tool_choice is not None and req.tool_choice.disable_parallel_tool_use:
            fields["parallel_tool_calls"] = False
    elif req.tool_choice is not None and req.tool_choice.type in ("any", "tool"):
        raise BadRequestError("tool_choice: requires 'tools'", param="tool_choice")
    thinking = _thinking(req)
    if thinking is not None:
        fields["enable_thinking"] = thinking
    return fields


def to_chat(req: MessagesRequest) -> ChatCompletionRequest:
    """The chat completion request a Messages request stands for."""
    fields = chat_fields(req)
    fields["max_tokens"] = req.max_tokens
    fields["stream"] = False
    if req.stop_sequences:
        fields["stop"] = req.stop_sequences
    for name in ("temperature", "top_p", "top_k"):
        v = getattr(req, name)
        if v is not None:
            fields[name] = v
    if req.metadata is not None and req.metadata.user_id:
        fields["user"] = req.metadata.user_id
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as exc:
        errors = exc.errors()
        if not errors:
            raise BadRequestError("invalid request") from None
        where = ".".join(str(p) for p in errors[0]["loc"])
        raise BadRequestError(f"{where}: {errors[0]['msg']}" if where else errors[0]["msg"], param=where or None) from None
