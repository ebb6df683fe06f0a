"""Tokenize / detokenize: the wire schema (vLLM's shapes), the worker payloads, the result.

``POST /tokenize`` (also ``/v1/tokenize``) takes ``{model, prompt}`` or ``{model,
messages, add_generation_prompt, chat_template_kwargs, tools}`` and answers ``{count,
max_model_len, tokens, token_strs?}``. Messages are rendered with the chat template the
model's chat path uses, so ``count`` is the ``usage.prompt_tokens`` a chat completion of
the same messages is billed. ``POST /detokenize`` (also ``/v1/detokenize``) takes
``{model, tokens}`` and answers ``{prompt}`` (special tokens written out, as vLLM does).

``add_special_tokens`` left out means "what the engine's own path adds": BOS for a prompt
where the model asks for one (the completion path), and for messages only where the chat
template does not write it itself (the chat path) — vLLM's defaults (true for a prompt,
false for messages) for every model whose template writes its own BOS.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from ..errors import BadRequestError
from .kinds import declare_capability
from .openai import LIMITS, RESERVED_TEMPLATE_KEYS, ChatMessage, ModelName, OpenAIBaseModel, Tool
from .worker import ToolSpec

__all__ = [
    "TOKENIZE_LIMITS",
    "TokenizeRequest",
    "DetokenizeRequest",
    "TokenizePayload",
    "DetokenizePayload",
    "TOKENIZE",
    "DETOKENIZE",
    "tokenize_payload",
    "detokenize_payload",
]


class _TokenizeLimits:
    max_prompt_chars = 1_000_000  # far more than any context window holds
    max_messages = LIMITS.max_messages
    max_tools = LIMITS.max_tools
    max_token_ids = 262_144  # longer than any context window we serve
    max_template_kwargs_bytes = 65_536


TOKENIZE_LIMITS = _TokenizeLimits()


def _non_negative(ids: list[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t < 0:
            raise ValueError(f"tokens[{i}] = {t} is negative; token ids are non-negative integers")
    return ids


# ---- wire schemas ---------------------------------------------------------------------------
class TokenizeRequest(OpenAIBaseModel):
    """vLLM's ``TokenizeCompletionRequest`` and ``TokenizeChatRequest`` in one model."""

    model: ModelName = ""
    prompt: str | None = Field(default=None, max_length=TOKENIZE_LIMITS.max_prompt_chars)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=TOKENIZE_LIMITS.max_messages)
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Tool] | None = Field(default=None, max_length=TOKENIZE_LIMITS.max_tools)
    enable_thinking: bool | None = None
    return_token_strs: bool = False


class DetokenizeRequest(OpenAIBaseModel):
    model: ModelName = ""
    tokens: list[StrictInt] = Field(max_length=TOKENIZE_LIMITS.max_token_ids)

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, v: list[int]) -> list[int]:
        return _non_negative(v)


# ---- worker payloads ------------------------------------------------------------------------
class TokenizePayload(BaseModel):
    """What the gateway sends a worker for the ``tokenize`` capability: a prompt, or chat
    messages (dumped as on the chat path) with what the template is rendered with."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, max_length=TOKENIZE_LIMITS.max_prompt_chars)
    messages: list[dict[str, Any]] | None = Field(default=None, min_length=1, max_length=TOKENIZE_LIMITS.max_messages)
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = None
    chat_template_kwargs: dict[str, Any] = {}
    tools: ToolSpec | None = None
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizePayload:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of prompt and messages must be given")
        return self


class DetokenizePayload(BaseModel):
    """What the gateway sends a worker for the ``detokenize`` capability."""

    model_config = ConfigDict(extra="forbid")

    tokens: list[StrictInt] = Field(max_length=TOKENIZE_LIMITS.max_token_ids)

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, v: list[int]) -> list[int]:
        return _non_negative(v)


TOKENIZE = declare_capability("tokenize", TokenizePayload, kinds=("auto",))
DETOKENIZE = declare_capability("detokenize", DetokenizePayload, kinds=("auto",))


# ---- conversion -----------------------------------------------------------------------------
def tokenize_payload(body: TokenizeRequest) -> TokenizePayload:
    """The worker payload; 400 (with ``param``) for what the schema alone cannot say."""
    if (body.prompt is None) == (body.messages is None):
        raise BadRequestError("give exactly one of 'prompt' and 'messages'", param="prompt" if body.prompt is None else "messages")
    if body.prompt is not None:
        for name in ("tools", "chat_template_kwargs", "enable_thinking"):
            if getattr(body, name) is not None:
                raise BadRequestError(f"'{name}' applies to 'messages', not to a 'prompt'", param=name)
        return TokenizePayload(
            prompt=body.prompt, add_special_tokens=body.add_special_tokens, return_token_strs=body.return_token_strs
        )
    kwargs: dict[str, Any] = dict(body.chat_template_kwargs or {})
    if kwargs and len(orjson.dumps(kwargs)) > TOKENIZE_LIMITS.max_template_kwargs_bytes:
        raise BadRequestError("chat_template_kwargs: at most 64 KiB", param="chat_template_kwargs")
    bad = RESERVED_TEMPLATE_KEYS & set(kwargs)
    if bad:
        raise BadRequestError(f"chat_template_kwargs may not set {', '.join(sorted(bad))}", param="chat_template_kwargs")
    if body.enable_thinking is not None:
        kwargs["enable_thinking"] = body.enable_thinking
    tools = None
    if body.tools:
        tools = ToolSpec(tools=[t.model_dump(exclude_none=True, by_alias=True) for t in body.tools])
    assert body.messages is not None
    return TokenizePayload(
        messages=[m.model_dump(exclude_none=True) for m in body.messages],
        add_generation_prompt=body.add_generation_prompt,
        add_special_tokens=body.add_special_tokens,
        chat_template_kwargs=kwargs,
        tools=tools,
        return_token_strs=body.return_token_strs,
    )


def detokenize_payload(body: DetokenizeRequest) -> DetokenizePayload:
    return DetokenizePayload(tokens=body.tokens)
