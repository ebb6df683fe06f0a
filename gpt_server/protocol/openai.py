"""OpenAI-facing request schemas (chat completions, completions).

Mirrors the OpenAI reference: unknown fields are accepted and logged, every count a
request can set has an upper bound. Conversion to engine parameters lives in plain
functions in ``gpt_server.gateway.convert``.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ..errors import BadRequestError
from .kinds import Kind, declare_capability, declare_kind

__all__ = [
    "function_tool",
    "LIMITS",
    "RESERVED_TEMPLATE_KEYS",
    "OpenAIBaseModel",
    "ModelName",
    "ChatMessage",
    "ChatCompletionRequest",
    "CompletionRequest",
    "StreamOptions",
    "CHAT",
    "COMPLETION",
]

log = logging.getLogger(__name__)

_TOKEN_ID = re.compile(r"[0-9]{1,10}")


class _Limits:
    max_n = 16
    max_messages = 2048
    max_stop = 16
    max_stop_len = 256
    max_logit_bias = 1024
    max_top_logprobs = 20
    max_prompts = 64
    max_tools = 128
    max_choices = 256
    max_grammar_chars = 65536
    max_tokens = 1_000_000
    max_text_chars = 4_000_000
    max_choices_per_request = 128  # completions: prompts × n
    max_template_kwargs_bytes = 65536
    max_content_parts = 256  # per message
    max_request_parts = 4096  # content parts of all messages together
    max_message_tool_calls = 128


LIMITS = _Limits()

# chat_template_kwargs may not set these: the template variables the server sets itself, and
# the options of transformers' apply_chat_template that an engine server (vLLM, SGLang) takes
# from chat_template_kwargs — a client's ``chat_template`` there is server-side template injection
RESERVED_TEMPLATE_KEYS = frozenset({
    "messages", "tools", "add_generation_prompt", "bos_token", "eos_token",
    "chat_template", "tokenize", "tokenizer_kwargs", "padding", "truncation", "max_length",
    "return_tensors", "return_dict", "return_assistant_tokens_mask", "continue_final_message",
})


ModelName = Annotated[
    str,
    BeforeValidator(lambda v: "" if v is None else v),
    Field(max_length=256, description="the served model; left out: the default model for the route's capability"),
]


class OpenAIBaseModel(BaseModel):
    """Extra fields are allowed (clients send vendor extensions) and logged once."""

    model_config = ConfigDict(extra="allow", protected_namespaces=(), populate_by_name=True)

    @model_validator(mode="after")
    def _log_extra(self) -> OpenAIBaseModel:
        if self.model_extra:
            log.debug("ignoring unknown fields in %s: %s", type(self).__name__, sorted(self.model_extra))
        return self


class TextPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ImageURL(OpenAIBaseModel):
    url: str
    detail: str | None = None


class ImagePart(OpenAIBaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(OpenAIBaseModel):
    data: str
    format: str


class AudioPart(OpenAIBaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


class RefusalPart(OpenAIBaseModel):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[
    TextPart | ImagePart | AudioPart | RefusalPart, Field(discriminator="type")
]


class FunctionCall(OpenAIBaseModel):
    name: str
    arguments: str = ""


class ToolCall(OpenAIBaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | Annotated[list[ContentPart], Field(max_length=LIMITS.max_content_parts)] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, max_length=LIMITS.max_message_tool_calls)
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"content is required for role '{self.role}'")
        return self


class FunctionDef(OpenAIBaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    description: str | None = Field(default=None, max_length=16384)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(OpenAIBaseModel):
    name: str


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchemaFormat(OpenAIBaseModel):
    name: str = Field(default="response", max_length=256)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format: json_schema.schema is required for type json_schema")
        return self


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class _SamplingFields(OpenAIBaseModel):
    model: ModelName = ""
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=100_000)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=LIMITS.max_n)
    stop: str | list[Annotated[str, Field(min_length=1, max_length=LIMITS.max_stop_len)]] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = Field(default=None, max_length=512)

    @model_validator(mode="after")
    def _check_bounds(self) -> _SamplingFields:
        if isinstance(self.stop, list) and len(self.stop) > LIMITS.max_stop:
            raise ValueError(f"stop: at most {LIMITS.max_stop} stop sequences are allowed")
        if isinstance(self.stop, str) and not (0 < len(self.stop) <= LIMITS.max_stop_len):
            raise ValueError(f"stop: must be 1 to {LIMITS.max_stop_len} characters")
        if self.logit_bias and len(self.logit_bias) > LIMITS.max_logit_bias:
            raise ValueError(f"logit_bias: at most {LIMITS.max_logit_bias} entries are allowed")
        if self.logit_bias:
            for key in self.logit_bias:
                if not _TOKEN_ID.fullmatch(key):  # ASCII digits only: int() takes "²", "--5" trips it
                    raise ValueError(f"logit_bias: key '{key[:32]}' is not a token id")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class _StructuredFields(OpenAIBaseModel):
    """Constrained output, for chat and legacy completions alike."""

    response_format: ResponseFormat | None = None
    # extensions (vLLM names)
    guided_json: dict[str, Any] | None = None
    guided_regex: str | None = Field(default=None, max_length=LIMITS.max_grammar_chars)
    guided_choice: list[Annotated[str, Field(max_length=1024)]] | None = Field(default=None, max_length=LIMITS.max_choices)
    guided_grammar: str | None = Field(default=None, max_length=LIMITS.max_grammar_chars)


class ChatCompletionRequest(_SamplingFields, _StructuredFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=LIMITS.max_messages)
    max_tokens: int | None = Field(default=None, ge=1, le=LIMITS.max_tokens)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=LIMITS.max_tokens)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=LIMITS.max_top_logprobs)
    tools: list[Tool] | None = Field(default=None, max_length=LIMITS.max_tools)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    enable_thinking: bool | None = None

    @classmethod
    def precheck(cls, data: Any) -> None:
        """The counts of a decoded body, checked before full validation: a huge body of many
        tiny parts is refused after one cheap pass instead of after building every part
        (pydantic holds the GIL while it validates, which stalls the gateway's other streams)."""
        messages = data.get("messages") if isinstance(data, dict) else None
        if not isinstance(messages, list):
            return
        if len(messages) > LIMITS.max_messages:
            raise BadRequestError(f"at most {LIMITS.max_messages} messages", param="messages")
        parts = sum(len(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list))
        if parts > LIMITS.max_request_parts:
            raise BadRequestError(
                f"at most {LIMITS.max_request_parts} content parts in all messages together", param="messages"
            )

    @model_validator(mode="after")
    def _check_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        if self.chat_template_kwargs and len(orjson.dumps(self.chat_template_kwargs)) > LIMITS.max_template_kwargs_bytes:
            raise ValueError("chat_template_kwargs: at most 64 KiB")
        if sum(len(m.content) for m in self.messages if isinstance(m.content, list)) > LIMITS.max_request_parts:
            raise ValueError(f"messages: at most {LIMITS.max_request_parts} content parts in all messages together")
        return self


class CompletionRequest(_SamplingFields, _StructuredFields):
    prompt: (
        Annotated[str, Field(max_length=LIMITS.max_text_chars)]
        | list[Annotated[str, Field(max_length=LIMITS.max_text_chars)]]
        | list[int]
        | list[list[int]]
    )
    max_tokens: int | None = Field(default=16, ge=1, le=LIMITS.max_tokens)
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=LIMITS.max_top_logprobs)
    best_of: int | None = Field(default=None, ge=1, le=LIMITS.max_n)

    @model_validator(mode="after")
    def _check_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list):
            if not self.prompt:
                raise ValueError("prompt: must not be empty")
            if len(self.prompt) > LIMITS.max_prompts and not isinstance(self.prompt[0], int):
                raise ValueError(f"prompt: at most {LIMITS.max_prompts} prompts are allowed")
        return self


CHAT = declare_capability("chat", kinds=("auto",))
COMPLETION = declare_capability("completion", kinds=("auto",))
declare_kind(
    Kind(
        name="auto",
        label="chat",
        default_engine="llama_cpp",
        description="chat and completion LLMs (/v1/chat/completions, /v1/completions)",
        legacy_names=(
            "qwen", "qwen2", "qwen3", "chatglm", "glm4", "llama", "baichuan", "internlm",
            "internlm2", "deepseek", "yi", "mixtral", "mistral", "phi", "gemma", "minicpmv",
            "internvl", "internvl2", "glm4v", "qwen2vl", "qwen2_vl", "qwen_vl", "llava",
            "minimax", "kimi", "chat", "llm",
        ),
    )
)


def function_tool(name: Any, parameters: Any, description: Any = None, strict: Any = None) -> dict[str, Any]:
    """A chat-completions ``tools`` item from another API's tool definition (Anthropic's custom
    tools, Responses' function tools): no parameters means an empty object schema."""
    fn: dict[str, Any] = {"name": name, "parameters": parameters or {"type": "object", "properties": {}}}
    if description is not None:
        fn["description"] = description
    if strict is not None:
        fn["strict"] = strict
    return {"type": "function", "function": fn}
