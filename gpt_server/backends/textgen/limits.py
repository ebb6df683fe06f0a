"""Request checks shared by the token-level engines: context budget, sampling, token ids."""

from __future__ import annotations

from ...errors import BadRequestError
from ...protocol.worker import GenerateRequest

__all__ = ["completion_budget", "check_sampling", "check_token_ids", "prepares_inline", "INLINE_PREPARE_CHARS"]

# a request with at most this much text (and no grammar to compile) is templated and tokenized
# on the event loop: SmolLM2's template and tokenizer take 0.15 ms for 200 characters, 0.52 ms for
# 2,048; a trip to the executor costs 0.1 ms on an idle machine and more beside a running decode,
# and a lone request pays it in full before its first token
INLINE_PREPARE_CHARS = 1024
_PLAIN_KEYS = frozenset({"role", "content", "name"})


def completion_budget(prompts: list[list[int]], req: GenerateRequest, n_ctx: int) -> int:
    """Tokens each choice may generate; 400 when a prompt or the request does not fit."""
    param = "messages" if req.kind == "chat" else "prompt"
    if not prompts or any(len(p) == 0 for p in prompts):
        raise BadRequestError("prompt must not be empty", param=param)
    longest = max(len(p) for p in prompts)
    if longest >= n_ctx:
        raise BadRequestError(
            f"This model's maximum context length is {n_ctx} tokens. However, your {param} "
            f"resulted in {longest} tokens.",
            param=param,
            code="context_length_exceeded",
        )
    mt = req.params.max_tokens
    if mt is None:
        return n_ctx - longest
    if longest + mt > n_ctx:
        raise BadRequestError(
            f"This model's maximum context length is {n_ctx} tokens. However, you requested "
            f"{longest + mt} tokens ({longest} in the {param}, {mt} in the completion). "
            "Please reduce the length of the input or the completion.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return mt


def check_sampling(req: GenerateRequest, max_n: int | None, engine: str) -> None:
    """Limits of the model entry and what the token engines cannot do."""
    p = req.params
    if max_n is not None and p.n > max_n:
        raise BadRequestError(f"n must be at most {max_n} for this model", param="n")
    if p.echo and p.logprobs:
        raise BadRequestError(f"echo together with logprobs is not supported by the {engine} engine", param="echo")


def check_token_ids(tokens: list[int], n_vocab: int, param: str = "tokens") -> None:
    """400 naming the first id outside ``0 .. n_vocab - 1``."""
    for i, t in enumerate(tokens):
        if not 0 <= t < n_vocab:
            raise BadRequestError(
                f"{param}[{i}] = {t} is outside the vocabulary (0..{n_vocab - 1})", param=param, code="invalid_token_id"
            )


def prepares_inline(req: GenerateRequest, limit: int = INLINE_PREPARE_CHARS) -> bool:
    """The request is short text only, with no tools and no structured output (both may compile
    a grammar): cheap enough to prepare on the event loop."""
    if req.tools is not None or req.structured is not None or req.chat_template_kwargs:
        return False
    total = 0
    if req.kind == "chat":
        for m in req.messages or []:
            if not m.keys() <= _PLAIN_KEYS:  # tool calls, reasoning … go to the thread
                return False
            content = m.get("content")
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, list):
                for part in content:
                    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                        return False
                    total += len(part["text"])
            elif content is not None:
                return False
            if total > limit:
                return False
        return True
    for p in req.prompts or []:
        total += len(p)
        if total > limit:
            return False
    return True
