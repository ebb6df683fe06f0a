"""Plain conversion functions: OpenAI requests → internal requests; events → OpenAI objects."""

from __future__ import annotations

import os
from typing import Any

from ..chat.chunks import chat_logprobs, completion_logprobs, usage_dict
from ..chat.grammar_limits import GrammarLimits, check_spec, check_tools
from ..errors import BadRequestError
from ..protocol.openai import (
    LIMITS,
    RESERVED_TEMPLATE_KEYS,
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
)
from ..protocol.worker import (
    GenerateRequest,
    SamplingParams,
    StructuredSpec,
    ToolSpec,
)

__all__ = [
    "chat_to_generate",
    "completion_to_generate",
    "new_id",
    "chat_logprobs",
    "completion_logprobs",
    "usage_dict",
]


def new_id(prefix: str) -> str:
    """``prefix-`` and 32 random hex digits (as a uuid4's hex, without building the UUID)."""
    return f"{prefix}-{os.urandom(16).hex()}"


def _sampling(req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> SamplingParams:
    top_k = req.top_k if req.top_k is not None and req.top_k > 0 else 0
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=top_k,
        min_p=req.min_p or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=req.repetition_penalty or 1.0,
        stop=req.stop_list(),
        seed=None if req.seed is None else req.seed % 2**64,
        n=req.n,
        logit_bias={int(k): float(v) for k, v in (req.logit_bias or {}).items()},
    )


def _tool_spec(req: ChatCompletionRequest) -> ToolSpec | None:
    tc = req.tool_choice
    if not req.tools or tc == "none":
        if isinstance(tc, NamedToolChoice) or tc == "required":
            raise BadRequestError("tool_choice needs tools", param="tool_choice")
        return None
    tools = [t.model_dump(exclude_none=True, by_alias=True) for t in req.tools]
    names = [t.function.name for t in req.tools]
    if len(set(names)) != len(names):
        raise BadRequestError("tool names must be unique", param="tools")
    parallel = req.parallel_tool_calls is not False
    if isinstance(tc, NamedToolChoice):
        if tc.function.name not in names:
            raise BadRequestError(f"tool_choice names '{tc.function.name}', which is not in tools", param="tool_choice")
        # one call of the named function, unless several are asked for explicitly
        return ToolSpec(tools=tools, choice="named", name=tc.function.name, parallel=req.parallel_tool_calls is True)
    return ToolSpec(tools=tools, choice="required" if tc == "required" else "auto", parallel=parallel)


def _structured(req: ChatCompletionRequest | CompletionRequest, limits: GrammarLimits) -> StructuredSpec | None:
    spec = _structured_spec(req)
    if spec is not None:
        given = [k for k in ("guided_json", "guided_regex", "guided_choice", "guided_grammar") if getattr(req, k) is not None]
        check_spec(spec, limits, given[0] if given else "response_format")
    return spec


def _structured_spec(req: ChatCompletionRequest | CompletionRequest) -> StructuredSpec | None:
    given = [
        k for k in ("guided_json", "guided_regex", "guided_choice", "guided_grammar") if getattr(req, k) is not None
    ]
    rf = req.response_format
    if rf is not None and rf.type != "text":
        given.append("response_format")
    if len(given) > 1:
        raise BadRequestError(f"only one of {', '.join(given)} may be given", param=given[1])
    if rf is not None and rf.type == "json_object":
        return StructuredSpec(type="json_object")
    if rf is not None and rf.type == "json_schema":
        assert rf.json_schema is not None
        return StructuredSpec(type="json_schema", json_schema=rf.json_schema.schema_, strict=bool(rf.json_schema.strict))
    if req.guided_json is not None:
        return StructuredSpec(type="json_schema", json_schema=req.guided_json)
    if req.guided_regex is not None:
        return StructuredSpec(type="regex", pattern=req.guided_regex)
    if req.guided_choice is not None:
        if not req.guided_choice:
            raise BadRequestError("guided_choice must not be empty", param="guided_choice")
        return StructuredSpec(type="choice", choices=req.guided_choice)
    if req.guided_grammar is not None:
        return StructuredSpec(type="grammar", grammar=req.guided_grammar)
    return None


def chat_to_generate(req: ChatCompletionRequest, request_id: str, limits: GrammarLimits = GrammarLimits()) -> GenerateRequest:
    tools = _tool_spec(req)
    structured = _structured(req, limits)
    check_tools(tools, limits)
    if tools is not None and tools.enforce and structured is not None:
        raise BadRequestError("tool_choice required/named cannot be combined with response_format", param="response_format")
    params = _sampling(req, req.max_completion_tokens or req.max_tokens)
    params.logprobs = req.logprobs
    params.top_logprobs = req.top_logprobs or 0
    kwargs: dict[str, Any] = dict(req.chat_template_kwargs or {})
    bad = RESERVED_TEMPLATE_KEYS & set(kwargs)
    if bad:
        raise BadRequestError(f"chat_template_kwargs may not set {', '.join(sorted(bad))}", param="chat_template_kwargs")
    if req.enable_thinking is not None:
        kwargs["enable_thinking"] = req.enable_thinking
    return GenerateRequest(
        request_id=request_id,
        model=req.model,
        kind="chat",
        messages=[m.model_dump(exclude_none=True) for m in req.messages],
        params=params,
        chat_template_kwargs=kwargs,
        tools=tools,
        structured=structured,
    )


def completion_to_generate(req: CompletionRequest, request_id: str, limits: GrammarLimits = GrammarLimits()) -> GenerateRequest:
    if req.suffix:
        raise BadRequestError("suffix is not supported by this model", param="suffix", code="unsupported_parameter")
    if req.best_of is not None and req.best_of != req.n:
        raise BadRequestError("best_of different from n is not supported", param="best_of", code="unsupported_parameter")
    p = req.prompt
    prompts: list[str | list[int]]
    if isinstance(p, str):
        prompts = [p]
    elif p and isinstance(p[0], int):
        prompts = [list(p)]
    else:
        prompts = list(p)  # type: ignore[arg-type]
    if len(prompts) * req.n > LIMITS.max_choices_per_request:
        raise BadRequestError(f"too many choices: prompts × n must be at most {LIMITS.max_choices_per_request}", param="n")
    structured = _structured(req, limits)  # each prompt's completion is constrained, as on chat
    params = _sampling(req, req.max_tokens)
    params.echo = req.echo
    params.logprobs = req.logprobs is not None
    params.top_logprobs = req.logprobs or 0
    return GenerateRequest(
        request_id=request_id, model=req.model, kind="completion", prompts=prompts, params=params, structured=structured
    )
