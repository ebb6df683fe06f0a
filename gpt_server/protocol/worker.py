"""Internal controller <-> worker <-> gateway protocol (typed, versioned).

Workers stream NDJSON lines, each one ``Event``; streams carry deltas only.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    computed_field,
    model_validator,
)

from .openai import LIMITS

__all__ = [
    "CATCH_ALL",
    "PROTOCOL_VERSION",
    "SECRET_HEADER",
    "secret_matches",
    "WireBytes",
    "WorkerInfo",
    "WorkerView",
    "Heartbeat",
    "HeartbeatReply",
    "DispatchRequest",
    "DispatchReply",
    "ModelEntryInfo",
    "AdapterChange",
    "ADAPTER_NAME_PATTERN",
    "MAX_ADAPTER_PATH",
    "InvokeRequest",
    "invoke_body",
    "SamplingParams",
    "GenerateRequest",
    "StructuredSpec",
    "ToolSpec",
    "ToolCallDelta",
    "TopLogprob",
    "TokenLogprob",
    "DeltaEvent",
    "FinishEvent",
    "UsageEvent",
    "ErrorEvent",
    "EndEvent",
    "Event",
    "EVENT_ADAPTER",
]

# bumped whenever a message changes shape; the controller refuses a worker of another version
PROTOCOL_VERSION = 8  # 8: the invoke socket's call frames carry a kind (chats and completions go over it)
SECRET_HEADER = "X-GPT-Server-Secret"


def secret_matches(given: str | bytes, secret: str) -> bool:
    """Constant-time check of an internal-secret header value."""
    raw = given.encode() if isinstance(given, str) else given
    return hmac.compare_digest(raw, secret.encode())


def _from_base64(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not valid base64") from None
    return v


# bytes in Python; base64 text in JSON (a payload built in the gateway holds the raw bytes)
WireBytes = Annotated[
    bytes,
    BeforeValidator(_from_base64),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str, when_used="json"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


CATCH_ALL = "*"  # the alias of the model that takes requests for unknown names (per capability)


class WorkerInfo(_Strict):
    """What a worker tells the controller when it registers."""

    protocol_version: int = PROTOCOL_VERSION
    worker_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:+-]+$")
    address: str = Field(
        max_length=512, pattern=r"^(https?://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?|inproc://[^\s]+)$",
        description="base URL others can reach, e.g. http://10.0.0.5:41234",
    )
    model_name: str = Field(min_length=1, max_length=128)
    aliases: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(default=[], max_length=64)
    adapters: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default=[], max_length=64, description="the aliases that are LoRA adapters of model_name (their parent)"
    )
    model_kind: str = Field("auto", max_length=32)
    engine: str = Field("", max_length=64, description="the engine (work_mode) serving it")
    capabilities: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default=[], max_length=64)
    capacity: int = Field(ge=1, le=100_000, description="requests the engine runs at once")
    context_length: int | None = Field(None, ge=1, le=100_000_000)
    heartbeat_interval: float = Field(3.0, gt=0, le=600)
    pid: int | None = Field(None, ge=0, le=2**31)
    replica: int = Field(0, ge=0, le=1024)
    default: bool = Field(False, description="the model a request without 'model' gets among those with a capability")
    fingerprint: str = Field(
        "", max_length=64, pattern=r"^[A-Za-z0-9_]*$",
        description="the responses' system_fingerprint: stable for one model, engine and build",
    )
    stream_socket: str = Field(
        "", max_length=256, pattern=r"^(/[^\x00]*)?$",
        description="the worker's hand-off socket (a path on its host): a gateway on that host may give it "
        "a client's connection to write a stream to (transport.direct)",
    )
    invoke_socket: str = Field(
        "", max_length=256, pattern=r"^(/[^\x00]*)?$",
        description="the worker's invoke socket (a path on its host): a gateway on that host sends it "
        "embeddings, rerank and other JSON calls there instead of over HTTP (transport.lane)",
    )


class WorkerView(WorkerInfo):
    """A registered worker as the controller lists it (``GET /controller/workers``, the
    dashboard): what it registered with plus its live state. Unknown keys are ignored when
    parsing, so a gateway can read a newer controller's list."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    queue_length: int = Field(0, description="requests queued or running on the worker")
    healthy: bool = True
    dispatched_total: int = 0
    gateway_inflight: int = Field(0, description="requests the listing gateway has open on the worker")
    failures: int = 0
    requests_total: int = 0
    tokens_total: int = 0
    rss_bytes: int = Field(0, description="resident memory of the worker process (and the engine processes it runs)")
    last_error: str | None = None
    state: str = "ready"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def active(self) -> int:
        """The same number as ``queue_length``, kept so the listed JSON keeps its keys."""
        return self.queue_length


class Heartbeat(_Strict):
    worker_id: str
    queue_length: int = Field(0, description="requests queued or running on the worker")
    healthy: bool = True
    # counters for the dashboard; rates are computed from successive reads
    requests_total: int = 0
    tokens_total: int = 0
    rss_bytes: int = Field(0, ge=0, le=2**50, description="resident memory of the worker process (and the engine processes it runs)")
    last_error: str | None = None
    state: str = "ready"


class HeartbeatReply(_Strict):
    known: bool


class DispatchRequest(_Strict):
    model: str
    exclude: list[str] = []
    capability: str | None = None
    affinity: str | None = Field(None, max_length=256)  # requests of one key go to one replica while it can take them


class DispatchReply(_Strict):
    worker_id: str
    address: str
    model_name: str
    fingerprint: str = ""
    stream_socket: str = ""
    invoke_socket: str = ""


class ModelEntryInfo(_Strict):
    id: str
    model_name: str
    model_kind: str
    created: int
    workers: int
    context_length: int | None = None
    capabilities: list[str] = []
    parent: str | None = None  # the base model of a LoRA adapter


# a LoRA adapter's name is a model id: letters, digits and . _ : / @ + - (1-128 characters)
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"
MAX_ADAPTER_PATH = 4096


class AdapterChange(_Strict):
    """``POST /worker/adapters``: load (``path`` given) or unload a LoRA adapter at run time.
    The worker answers with the adapters it serves then, and registers again with them."""

    op: Literal["load", "unload"]
    name: str = Field(pattern=ADAPTER_NAME_PATTERN, max_length=128)
    path: str | None = Field(None, min_length=1, max_length=MAX_ADAPTER_PATH, description="on the worker's host")


class InvokeRequest(_Strict):
    """A non-generation call (embed, rerank, classify, transcribe, speech, image …).

    ``payload`` travels as JSON data; the worker validates it once, with the payload model
    its capability declares (``protocol.kinds``), before the backend sees it."""

    request_id: str
    model: str
    capability: str
    payload: dict[str, Any]


def invoke_body(request_id: str, model: str, capability: str, payload: BaseModel) -> bytes:
    """An ``InvokeRequest`` as JSON bytes, the payload model serialised once."""
    return orjson.dumps(
        {
            "request_id": request_id,
            "model": model,
            "capability": str(capability),
            "payload": orjson.Fragment(payload.__pydantic_serializer__.to_json(payload)),
        }
    )


# The worker applies the gateway's bounds again (``LIMITS``): its routes can be called directly,
# with the secret, and a request must not be able to ask for more than the gateway allows.
_Stop = Annotated[str, Field(min_length=1, max_length=LIMITS.max_stop_len)]


class SamplingParams(_Strict):
    max_tokens: int | None = Field(None, ge=1, le=LIMITS.max_tokens)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=100_000)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    stop: list[_Stop] = Field([], max_length=LIMITS.max_stop)
    seed: int | None = Field(None, ge=0, le=2**64 - 1)
    n: int = Field(1, ge=1, le=LIMITS.max_n)
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=LIMITS.max_top_logprobs)
    logit_bias: dict[Annotated[int, Field(ge=0, le=9_999_999_999)], Annotated[float, Field(ge=-100, le=100)]] = Field(
        {}, max_length=LIMITS.max_logit_bias
    )
    echo: bool = False


class StructuredSpec(_Strict):
    """Constrained decoding for the output (response_format and guided_* extensions)."""

    type: Literal["json_object", "json_schema", "regex", "choice", "grammar"]
    json_schema: dict[str, Any] | None = None
    strict: bool = False
    pattern: str | None = Field(None, max_length=LIMITS.max_grammar_chars)
    choices: list[Annotated[str, Field(max_length=1024)]] | None = Field(None, max_length=LIMITS.max_choices)
    grammar: str | None = Field(None, max_length=LIMITS.max_grammar_chars)


class ToolSpec(_Strict):
    """The tools offered and how the model must use them (tool_choice)."""

    tools: list[dict[str, Any]] = Field(max_length=LIMITS.max_tools)
    choice: Literal["auto", "required", "named"] = "auto"
    name: str | None = Field(None, max_length=64)
    parallel: bool = True

    @property
    def enforce(self) -> bool:
        return self.choice in ("required", "named")


class GenerateRequest(_Strict):
    request_id: str = Field(max_length=256)
    model: str = Field(max_length=256)
    kind: Literal["chat", "completion"]
    messages: list[dict[str, Any]] | None = Field(None, min_length=1, max_length=LIMITS.max_messages)
    prompts: list[Annotated[str, Field(max_length=LIMITS.max_text_chars)] | list[int]] | None = Field(
        None, min_length=1, max_length=LIMITS.max_choices_per_request
    )
    params: SamplingParams = SamplingParams()
    chat_template_kwargs: dict[str, Any] = {}
    tools: ToolSpec | None = None
    structured: StructuredSpec | None = None
    # the caller wants the answer whole (not streamed): the worker sends each choice's deltas as
    # one event at the end, not an event per token (``protocol.deltas.Answer``)
    whole: bool = False

    @model_validator(mode="after")
    def _check_bounds(self) -> GenerateRequest:
        if self.prompts and len(self.prompts) * self.params.n > LIMITS.max_choices_per_request:
            raise ValueError(f"too many choices: prompts × n must be at most {LIMITS.max_choices_per_request}")
        if self.chat_template_kwargs and len(orjson.dumps(self.chat_template_kwargs)) > LIMITS.max_template_kwargs_bytes:
            raise ValueError(f"chat_template_kwargs: at most {LIMITS.max_template_kwargs_bytes} bytes")
        return self


class TopLogprob(_Strict):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(_Strict):
    token: str
    logprob: float | None
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = []


class ToolCallDelta(_Strict):
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class DeltaEvent(_Strict):
    t: Literal["delta"] = "delta"
    index: int
    text: str
    logprobs: list[TokenLogprob] | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    # a whole answer's deltas (``GenerateRequest.whole``): seconds from its first token to this
    # event's sending, so the gateway can time the first token
    held: float | None = None


class FinishEvent(_Strict):
    t: Literal["finish"] = "finish"
    index: int
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "abort"]


class UsageEvent(_Strict):
    t: Literal["usage"] = "usage"
    prompt_tokens: int
    completion_tokens: int
    # prompt tokens the engine found in its cache (not prefilled again); None = it does not say
    cached_tokens: int | None = None


class ErrorEvent(_Strict):
    t: Literal["error"] = "error"
    status: int
    type: str
    message: str
    param: str | None = None
    code: str | None = None


class EndEvent(_Strict):
    """The last event of a stream the worker wrote to the client itself (``transport.direct``):
    everything up to ``[DONE]`` has been written; ``error``: it ended with an error event."""

    t: Literal["end"] = "end"
    error: bool = False


Event = Annotated[
    DeltaEvent | FinishEvent | UsageEvent | ErrorEvent | EndEvent, Field(discriminator="t")
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
