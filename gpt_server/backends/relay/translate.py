"""Plain conversions between our internal protocol and an upstream OpenAI-compatible API."""

from __future__ import annotations

import logging
from typing import Any

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
    TokenLogprob,
    ToolCallDelta,
    TopLogprob,
)

log = logging.getLogger(__name__)

__all__ = [
    "upstream_body",
    "chunk_events",
    "upstream_error",
    "FINISH_REASONS",
]

FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "abort"}


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


def _tools(req: GenerateRequest) -> dict[str, Any]:
    spec = req.tools
    if spec is None:
        return {}
    body: dict[str, Any] = {"tools": spec.tools}
    if spec.choice == "named":
        body["tool_choice"] = {"type": "function", "function": {"name": spec.name}}
    else:
        body["tool_choice"] = spec.choice
    if not spec.parallel:
        body["parallel_tool_calls"] = False
    return body


def _structured(req: GenerateRequest) -> dict[str, Any]:
    s = req.structured
    if s is None:
        return {}
    if s.type == "json_object":
        return {"response_format": {"type": "json_object"}}
    if s.type == "json_schema":
        schema = {"name": "output", "schema": s.json_schema or {}, "strict": s.strict}
        return {"response_format": {"type": "json_schema", "json_schema": schema}}
    raise BadRequestError(
        f"structured output of type '{s.type}' is not supported through this relay; use response_format",
        param="response_format",
        code="unsupported_parameter",
    )


def upstream_body(req: GenerateRequest, model: str) -> tuple[str, dict[str, Any]]:
    """(path, JSON body) of the streaming upstream request for a chat or completion."""
    body: dict[str, Any] = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    body.update(_sampling(req.params))
    p = req.params
    if req.kind == "chat":
        body["messages"] = req.messages or []
        if p.logprobs:
            body["logprobs"] = True
            if p.top_logprobs:
                body["top_logprobs"] = p.top_logprobs
        body.update(_tools(req))
        body.update(_structured(req))
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
        body.update(_structured(req))
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
