"""OpenAI Responses API request schema (``POST /v1/responses``) and its translation onto
the chat path (``ChatCompletionRequest``).

Bounded like the chat schemas (``LIMITS``); what the chat path cannot do (built-in tools
such as ``web_search``, file inputs, item references) is refused with a 400 naming it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from ..errors import BadRequestError
from .openai import LIMITS, ChatCompletionRequest, ModelName, OpenAIBaseModel, function_tool

__all__ = ["ResponsesRequest", "to_chat", "normalize_input"]

Item = dict[str, Any]


class TextFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = Field(default=None, max_length=256)
    description: str | None = Field(default=None, max_length=16384)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(OpenAIBaseModel):
    format: TextFormat | None = None
    verbosity: str | None = Field(default=None, max_length=16)


class Reasoning(OpenAIBaseModel):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(OpenAIBaseModel):
    model: ModelName = ""
    input: Annotated[str, Field(max_length=LIMITS.max_text_chars)] | Annotated[list[Item], Field(max_length=LIMITS.max_messages)] = ""
    instructions: str | None = Field(default=None, max_length=LIMITS.max_text_chars)
    tools: list[Item] | None = Field(default=None, max_length=LIMITS.max_tools)
    tool_choice: Literal["none", "auto", "required"] | Item | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=LIMITS.max_tokens)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    store: bool = True
    stream: bool = False
    previous_response_id: str | None = Field(default=None, max_length=256)
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(default=None, max_length=16)
    user: str | None = Field(default=None, max_length=512)
    truncation: Literal["auto", "disabled"] | None = None


# ---- translation ----------------------------------------------------------------------------
def _bad(where: str, message: str) -> BadRequestError:
    return BadRequestError(f"{where}: {message}", param=where)


def _str(item: Item, key: str, where: str, *, required: bool = True) -> str:
    v = item.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise _bad(f"{where}.{key}", "must be a string")
    if len(v) > LIMITS.max_text_chars:
        raise _bad(f"{where}.{key}", f"at most {LIMITS.max_text_chars} characters")
    return v


def normalize_input(req: ResponsesRequest) -> list[Item]:
    """The request's input as a list of items (a string is one user message)."""
    if isinstance(req.input, str):
        return [{"type": "message", "role": "user", "content": req.input}]
    return [dict(i) for i in req.input]


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        raise _bad(where, "must be a string or a list of content parts")
    if len(content) > LIMITS.max_content_parts:
        raise _bad(where, f"at most {LIMITS.max_content_parts} content parts")
    parts: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        w = f"{where}.{j}"
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": _str(p, "text", w)})
        elif kind == "refusal":
            parts.append({"type": "text", "text": _str(p, "refusal", w)})
        elif kind == "input_image":
            url = p.get("image_url")
            if not isinstance(url, str) or not url:
                raise _bad(f"{w}.image_url", "required (file_id images are not supported)")
            image: dict[str, Any] = {"url": url}
            if p.get("detail") in ("low", "high", "auto"):
                image["detail"] = p["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _bad(f"{w}.type", f"content part '{kind}' is not supported")
    return parts


def _messages(items: list[Item], instructions: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if instructions:
        out.append({"role": "system", "content": instructions})
    for i, item in enumerate(items):
        where = f"input.{i}"
        if not isinstance(item, dict):
            raise _bad(where, "must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(f"{where}.role", "must be one of user, assistant, system, developer")
            content = item.get("content")
            if isinstance(content, str):
                if len(content) > LIMITS.max_text_chars:
                    raise _bad(f"{where}.content", f"at most {LIMITS.max_text_chars} characters")
                value: Any = content
            else:
                value = _parts(content, f"{where}.content")
            if role != "user" and isinstance(value, list):
                if any(p["type"] != "text" for p in value):
                    raise _bad(f"{where}.content", f"images may be sent only in user messages, not {role}")
                value = "".join(p["text"] for p in value)
            out.append({"role": "system" if role == "developer" else role, "content": value})
        elif kind == "function_call":
            call = {
                "id": _str(item, "call_id", where),
                "type": "function",
                "function": {"name": _str(item, "name", where), "arguments": _str(item, "arguments", where)},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and (last.get("tool_calls") or not last.get("content")):
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else "".join(p["text"] for p in _parts(output, f"{where}.output") if p["type"] == "text")
            if len(text) > LIMITS.max_text_chars:
                raise _bad(f"{where}.output", f"at most {LIMITS.max_text_chars} characters")
            out.append({"role": "tool", "tool_call_id": _str(item, "call_id", where), "content": text})
        elif kind == "reasoning":
            continue  # the model's own past reasoning is not fed back
        else:
            raise _bad(f"{where}.type", f"input item '{kind}' is not supported")
    return out


def _tools(req: ResponsesRequest) -> list[dict[str, Any]] | None:
    if not req.tools:
        return None
    tools = []
    for i, t in enumerate(req.tools):
        kind = t.get("type")
        if kind != "function":
            raise _bad(f"tools.{i}.type", f"built-in tool '{kind}' is not supported; only function tools are")
        tools.append(function_tool(t.get("name"), t.get("parameters"), t.get("description"), t.get("strict")))
    return tools


def _tool_choice(req: ResponsesRequest) -> Any:
    tc = req.tool_choice
    if tc is None or isinstance(tc, str):
        return tc
    if tc.get("type") != "function":
        raise _bad("tool_choice.type", f"tool choice '{tc.get('type')}' is not supported; only function tools are")
    return {"type": "function", "function": {"name": tc.get("name")}}


def _response_format(req: ResponsesRequest) -> dict[str, Any] | None:
    fmt = req.text.format if req.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema_ is None:
        raise _bad("text.format.schema", "required for type json_schema")
    schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema_}
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def to_chat(req: ResponsesRequest, items: list[Item]) -> ChatCompletionRequest:
    """The chat completion request a Responses request stands for; ``items``: the whole
    conversation (a previous response's items, then this request's input)."""
    fields: dict[str, Any] = {"model": req.model, "messages": _messages(items, req.instructions), "stream": False}
    if not fields["messages"]:
        raise _bad("input", "no input given")
    tools = _tools(req)
    if tools:
        fields["tools"] = tools
        choice = _tool_choice(req)
        if choice is not None:
            fields["tool_choice"] = choice
        if req.parallel_tool_calls is not None:
            fields["parallel_tool_calls"] = req.parallel_tool_calls
    elif req.tool_choice not in (None, "auto", "none"):
        raise _bad("tool_choice", "requires 'tools'")
    fmt = _response_format(req)
    if fmt is not None:
        fields["response_format"] = fmt
    if req.reasoning is not None and req.reasoning.effort is not None:
        fields["enable_thinking"] = req.reasoning.effort != "none"
    if req.max_output_tokens is not None:
        fields["max_tokens"] = req.max_output_tokens
    for name in ("temperature", "top_p", "seed", "user"):
        v = getattr(req, name)
        if v is not None:
            fields[name] = v
    try:
        return ChatCompletionRequest.model_validate(fields)
    except ValidationError as exc:
        errors = exc.errors()
        if not errors:
            raise BadRequestError("invalid request") from None
        where = ".".join(str(p) for p in errors[0]["loc"])
        raise BadRequestError(f"{where}: {errors[0]['msg']}" if where else errors[0]["msg"], param=where or None) from None
