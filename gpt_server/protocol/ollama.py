"""Ollama's native API (``/api/chat``, ``/api/generate``, ``/api/embed`` …): request models
and plain conversion functions onto the OpenAI-shaped requests the gateway already serves.

The requests are translated, not re-implemented: a chat becomes a ``ChatCompletionRequest``
(tools, ``format`` as structured output, ``think`` as ``enable_thinking``), a non-raw
generate a one-turn chat (the model's own chat template applies, as in Ollama), a raw
generate a ``CompletionRequest`` (the prompt as is). Every bound is the OpenAI models' own,
checked when the translated request is validated. Field names follow the ``ollama`` Python
client's ``_types.py`` and Ollama's ``docs/api.md``.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from .openai import LIMITS

__all__ = [
    "OllamaMessage",
    "OllamaChatRequest",
    "OllamaGenerateRequest",
    "OllamaEmbedRequest",
    "OllamaEmbeddingsRequest",
    "OllamaShowRequest",
    "chat_body",
    "generate_chat_body",
    "generate_raw_body",
    "tool_calls_out",
    "done_reason",
    "created_at",
    "digest",
    "model_tag",
    "iso",
]

# images per message (base64 strings), and the size of one, as the chat path bounds them
_MAX_IMAGES = LIMITS.max_content_parts
_MAX_TOOL_CALLS = LIMITS.max_message_tool_calls

Format = Literal["", "json"] | dict[str, Any] | None


class _Base(BaseModel):
    """Unknown fields are accepted and ignored (clients send newer fields than we know)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


class OllamaToolFunction(_Base):
    name: str = Field(max_length=256)
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class OllamaToolCall(_Base):
    function: OllamaToolFunction


class OllamaMessage(_Base):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    thinking: str | None = None
    images: list[str] | None = Field(default=None, max_length=_MAX_IMAGES)  # base64; the body limit bounds their size
    tool_calls: list[OllamaToolCall] | None = Field(default=None, max_length=_MAX_TOOL_CALLS)
    tool_name: str | None = Field(default=None, max_length=256)


class _GenerateFields(_Base):
    model: str = Field(min_length=1, max_length=512)
    stream: bool = True  # Ollama streams unless told not to
    format: Format = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None  # accepted, ignored: the server keeps its models loaded
    think: bool | Literal["low", "medium", "high"] | None = None


class OllamaChatRequest(_GenerateFields):
    messages: list[OllamaMessage] = Field(default_factory=list, max_length=LIMITS.max_messages)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=LIMITS.max_tools)
    # an extension (Ollama has none): OpenAI's ``tool_choice``, passed on as is
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None


class OllamaGenerateRequest(_GenerateFields):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None  # a Go template: not supported, ignored (the model's own applies)
    context: list[int] | None = Field(default=None, max_length=LIMITS.max_tokens)  # accepted, ignored
    raw: bool = False
    images: list[str] | None = Field(default=None, max_length=_MAX_IMAGES)


class OllamaEmbedRequest(_Base):
    model: str = Field(min_length=1, max_length=512)
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


class OllamaEmbeddingsRequest(_Base):
    """The legacy ``/api/embeddings``: one prompt, one vector."""

    model: str = Field(min_length=1, max_length=512)
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


class OllamaShowRequest(_Base):
    model: str = Field(default="", max_length=512)
    name: str = Field(default="", max_length=512)  # older clients send ``name``
    verbose: bool = False


# ---- requests → OpenAI-shaped bodies ---------------------------------------------------

# Ollama option → OpenAI field; num_predict, stop and the rest are handled below
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repetition_penalty",
}


def _sampling(options: dict[str, Any] | None) -> dict[str, Any]:
    """Ollama ``options`` as OpenAI sampling fields. ``num_predict`` < 0 (-1: no limit, -2:
    fill the context) means no limit; ``num_ctx`` and the load-time options (``num_gpu``,
    ``num_thread`` …) are accepted and ignored: the context is the served model's."""
    out: dict[str, Any] = {}
    opts = options or {}
    for key, field in _OPTIONS.items():
        if opts.get(key) is not None:
            out[field] = opts[key]
    n = opts.get("num_predict")
    if n is not None and not (isinstance(n, int) and n < 0):
        out["max_tokens"] = n
    stop = opts.get("stop")
    if stop:
        out["stop"] = stop
    return out


def _format(fmt: Format) -> dict[str, Any]:
    if fmt == "json":
        return {"response_format": {"type": "json_object"}}
    if isinstance(fmt, dict):
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}}
    return {}


def _think(think: bool | str | None) -> dict[str, Any]:
    if think is None:
        return {}
    return {"enable_thinking": think is not False}


_MAGIC = {"iVBOR": "image/png", "/9j/": "image/jpeg", "R0lGOD": "image/gif", "UklGR": "image/webp"}


def _data_url(b64: str) -> str:
    if b64.startswith("data:"):
        return b64
    mime = next((m for k, m in _MAGIC.items() if b64.startswith(k)), "image/png")
    return f"data:{mime};base64,{b64}"


def _content(text: str | None, images: list[str] | None) -> Any:
    if not images:
        return text or ""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts += [{"type": "image_url", "image_url": {"url": _data_url(b)}} for b in images]
    return parts


def _messages(messages: list[OllamaMessage]) -> list[dict[str, Any]]:
    """Ollama messages as OpenAI ones: images as image parts, tool calls with ids made up
    here (Ollama has none) and each tool result tied to the call of its ``tool_name`` (else the
    oldest call not yet answered)."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (call id, function name) not yet answered
    for i, m in enumerate(messages):
        msg: dict[str, Any] = {"role": m.role, "content": _content(m.content, m.images)}
        if m.role == "assistant" and m.tool_calls:
            calls = []
            for j, c in enumerate(m.tool_calls):
                cid = f"call_{i}_{j}"
                args = c.function.arguments
                calls.append({"id": cid, "type": "function", "function": {"name": c.function.name, "arguments": args if isinstance(args, str) else orjson.dumps(args).decode()}})
                pending.append((cid, c.function.name))
            msg["tool_calls"] = calls
            msg["content"] = msg["content"] or None
        elif m.role == "tool":
            match = next((p for p in pending if p[1] == m.tool_name), pending[0] if pending else None)
            if match is not None:
                pending.remove(match)
                msg["tool_call_id"] = match[0]
            else:
                msg["tool_call_id"] = f"call_{i}"
            if m.tool_name:
                msg["name"] = m.tool_name
        out.append(msg)
    return out


def chat_body(req: OllamaChatRequest, model: str) -> dict[str, Any]:
    """The ``ChatCompletionRequest`` body of an Ollama chat (to be validated by it)."""
    body: dict[str, Any] = {"model": model, "messages": _messages(req.messages), "stream": False}
    body.update(_sampling(req.options))
    body.update(_format(req.format))
    body.update(_think(req.think))
    if req.tools:
        body["tools"] = [t if "function" in t else {"type": "function", "function": t} for t in req.tools]
    if req.tool_choice is not None:
        body["tool_choice"] = req.tool_choice
    return body


def generate_chat_body(req: OllamaGenerateRequest, model: str) -> dict[str, Any]:
    """A non-raw generate: one user turn (and the system prompt) through the model's chat template."""
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": req.system})
    messages.append({"role": "user", "content": _content(req.prompt, req.images)})
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": False}
    body.update(_sampling(req.options))
    body.update(_format(req.format))
    body.update(_think(req.think))
    return body


def generate_raw_body(req: OllamaGenerateRequest, model: str) -> dict[str, Any]:
    """A raw generate: the prompt as is (no template), as a ``CompletionRequest`` body."""
    body: dict[str, Any] = {"model": model, "prompt": req.prompt or "", "max_tokens": None, "stream": False}
    body.update(_sampling(req.options))
    return body


# ---- answers ------------------------------------------------------------------------------


def tool_calls_out(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool calls (arguments a JSON string) as Ollama's (arguments an object)."""
    out = []
    for c in calls:
        raw = c["function"]["arguments"] or "{}"
        try:
            args: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            args = raw  # not JSON: passed on as the model wrote it
        out.append({"function": {"name": c["function"]["name"], "arguments": args}})
    return out


def done_reason(finish: str | None) -> str:
    """Ollama says ``stop`` or ``length`` (a tool call ends with ``stop`` there too)."""
    return "length" if finish == "length" else "stop"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def created_at() -> str:
    return iso(time.time())


def digest(model_id: str) -> str:
    """A stable stand-in for Ollama's blob digest (there is no blob): sha256 of the id."""
    return hashlib.sha256(model_id.encode()).hexdigest()


def model_tag(model_id: str) -> str:
    """The name Ollama clients see: ``id:latest`` unless the id has a tag already."""
    return model_id if ":" in model_id.rsplit("/", 1)[-1] else f"{model_id}:latest"
