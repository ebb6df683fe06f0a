"""The chunks of a streamed chat or completion, from worker events: written once.

The gateway renders them when it relays a worker's events; a worker that writes a
stream straight to the client's connection (``transport.direct``) renders the same
chunks from the same ``ChunkShape``, which the gateway sends it with the connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..protocol.worker import DeltaEvent, ErrorEvent, Event, FinishEvent, TokenLogprob, UsageEvent

__all__ = ["ChunkShape", "chat_logprobs", "completion_logprobs", "render_batch", "usage_dict"]


def render_batch(batch: list[Event], convert: Callable[[Event], list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], ErrorEvent | None]:
    """The chunks of one batch of worker events, up to an error event, and that error (or None):
    the chunks before an error go out, then the stream ends with it."""
    out: list[dict[str, Any]] = []
    for ev in batch:
        if isinstance(ev, ErrorEvent):
            return out, ev
        out.extend(convert(ev))
    return out, None


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in e.top_logprobs],
            }
            for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    offsets = []
    pos = offset
    for e in entries:
        offsets.append(pos)
        pos += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t.token: t.logprob for t in e.top_logprobs} for e in entries],
        "text_offset": offsets,
    }


def usage_dict(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached is not None:  # OpenAI's field: prompt tokens served from the engine's cache
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def _chat_delta(ev: DeltaEvent) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if ev.reasoning:
        delta["reasoning_content"] = ev.reasoning
    if ev.text:
        delta["content"] = ev.text
    if ev.tool_calls:
        delta["tool_calls"] = [
            {"index": d.index, "id": d.id, "type": "function", "function": {"name": d.name, "arguments": d.arguments}}
            if d.id
            else {"index": d.index, "function": {"arguments": d.arguments}}
            for d in ev.tool_calls
        ]
    return delta


class ChunkShape(BaseModel):
    """What a stream's chunks carry besides the events: one per streamed request.

    ``head()`` is the chunks before the first token (chat: each choice's role), ``chunks(ev)``
    the chunks of one event. Completions number text offsets per choice, so one shape
    serves one stream (it keeps those offsets)."""

    model_config = {"extra": "forbid"}

    kind: Literal["chat", "completion"]
    id: str = Field(max_length=256)
    created: int
    model: str = Field(max_length=256)
    system_fingerprint: str = Field(max_length=256)
    n: int = Field(1, ge=1, le=1024)
    include_usage: bool = False
    logprobs: bool = False  # chat: ``logprobs`` asked; completions: ``logprobs`` is not None
    offsets: dict[int, int] = Field(default_factory=dict, max_length=1024)  # completions: text written per choice

    def _base(self) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "system_fingerprint": self.system_fingerprint}

    def head(self) -> list[dict[str, Any]]:
        if self.kind != "chat":
            return []
        return [self._chat(i, {"role": "assistant", "content": ""}) for i in range(self.n)]

    def _chat(self, index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        out = {**self._base(), "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
        if self.include_usage:
            out["usage"] = None
        return out

    def _text(self, index: int, text: str, finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        out = {**self._base(), "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
        if self.include_usage:
            out["usage"] = None
        return out

    def text_chunks(self, index: int, text: str, logprobs: list[TokenLogprob] | None) -> list[dict[str, Any]]:
        """The chunks of a delta of text alone (no reasoning, no tool calls)."""
        if self.kind == "chat":
            lp = chat_logprobs(logprobs) if (self.logprobs and logprobs) else None
            return [self._chat(index, {"content": text} if text else {}, logprobs=lp)] if text or lp else []
        offset = self.offsets.get(index, 0)
        lp = completion_logprobs(logprobs, offset) if (self.logprobs and logprobs) else None
        self.offsets[index] = offset + len(text)
        return [self._text(index, text, logprobs=lp)]

    def chunks(self, ev: Event) -> list[dict[str, Any]]:
        """The chunks of one worker event (none for an error: the caller renders it)."""
        if isinstance(ev, DeltaEvent):
            if self.kind == "chat" and (ev.reasoning or ev.tool_calls):
                lp = chat_logprobs(ev.logprobs) if (self.logprobs and ev.logprobs) else None
                return [self._chat(ev.index, _chat_delta(ev), logprobs=lp)]
            return self.text_chunks(ev.index, ev.text, ev.logprobs)
        if isinstance(ev, FinishEvent):
            if self.kind == "chat":
                return [self._chat(ev.index, {}, finish=ev.finish_reason)]
            return [self._text(ev.index, "", finish=ev.finish_reason)]
        if isinstance(ev, UsageEvent) and self.include_usage:
            return [{**self._base(), "choices": [], "usage": usage_dict(ev.prompt_tokens, ev.completion_tokens, ev.cached_tokens)}]
        return []
