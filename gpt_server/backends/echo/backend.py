"""A benchmark-only backend: echoes the prompt back with zero compute.

It measures what the gateway and worker runtime cost by themselves. For a chat
request it takes the last user message, for a completion each prompt, and streams
it back word by word as ``N`` delta events (``N = max_tokens``, default 16, at most
``MAX_EVENTS``), cycling the words when the text is shorter; ``token_interval_ms`` paces the
events like a decode loop. Not for production use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ...protocol.worker import DeltaEvent, Event, FinishEvent, GenerateRequest, UsageEvent
from ..base import Backend, BackendSpec
from . import EchoOptions

__all__ = ["EchoBackend", "MAX_EVENTS", "DEFAULT_EVENTS"]

MAX_EVENTS = 4096
DEFAULT_EVENTS = 16
_DEFAULT_CAPACITY = 256


def _text_of(content: Any) -> str:
    """The text of a message's ``content`` (a string or a list of content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _last_user_text(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return _text_of(m.get("content"))
    return ""


def _pieces(text: str, n: int) -> list[str]:
    """``n`` word pieces of ``text`` (words cycled; a lone "echo" when empty)."""
    words = text.split() or ["echo"]
    return [(words[i % len(words)] if i == 0 else " " + words[i % len(words)]) for i in range(n)]


class EchoBackend(Backend):
    """Chat and completion that echo their input immediately (benchmark only)."""

    capabilities: frozenset[str] = frozenset({"chat", "completion"})
    options: EchoOptions

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self._capacity = self.options.n_parallel or _DEFAULT_CAPACITY

    def load(self) -> None:
        return None

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def context_length(self) -> int | None:
        return 1 << 20

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        p = request.params
        if request.kind == "chat":
            texts = [_last_user_text(request.messages or [])]
        else:
            texts = [t if isinstance(t, str) else " ".join(map(str, t)) for t in (request.prompts or [""])]
        n = min(p.max_tokens if p.max_tokens is not None else DEFAULT_EVENTS, MAX_EVENTS)
        reason = "length" if p.max_tokens is not None and n >= p.max_tokens else "stop"
        prompt_tokens = 0
        index = 0
        pause = self.options.token_interval_ms / 1000
        for text in texts:
            prompt_tokens += max(1, len(text.split()))
            pieces = _pieces(text, n)
            for _ in range(p.n):
                if p.echo:
                    yield DeltaEvent(index=index, text=text)
                for piece in pieces:
                    if pause:
                        await asyncio.sleep(pause)
                    yield DeltaEvent(index=index, text=piece)
                yield FinishEvent(index=index, finish_reason=reason)
                index += 1
        yield UsageEvent(prompt_tokens=prompt_tokens, completion_tokens=n * index)
