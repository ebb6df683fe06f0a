"""Turn raw text deltas into reasoning / content / tool-call deltas, per choice."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..protocol.worker import DeltaEvent, Event, FinishEvent, ToolCallDelta
from .reasoning import StreamingReasoningExtractor, ThinkParser
from .tool_parsers import StreamingToolExtractor, ToolParser

__all__ = ["passes_through", "postprocess"]


class _Choice:
    def __init__(self, tool_parser: ToolParser | None, reasoning: ThinkParser | None, max_calls: int | None) -> None:
        self.reasoning = StreamingReasoningExtractor(reasoning) if reasoning else None
        self.tools = StreamingToolExtractor(tool_parser, max_calls) if tool_parser else None

    def feed(self, index: int, text: str, final: bool, logprobs: list | None = None) -> DeltaEvent | None:
        reasoning = ""
        content = text
        if self.reasoning is not None:
            reasoning, content = self.reasoning.feed(text, final)
        calls = []
        if self.tools is not None:
            content, tcs = self.tools.feed(content, final)
            calls = [ToolCallDelta(index=c.index, id=c.id, name=c.name, arguments=c.arguments) for c in tcs]
        if not (content or reasoning or calls or logprobs):
            return None
        return DeltaEvent(index=index, text=content, logprobs=logprobs, reasoning=reasoning or None, tool_calls=calls or None)


def passes_through(tool_parser: ToolParser | None, reasoning: ThinkParser | None) -> bool:
    """``postprocess`` with these parsers passes every event on unchanged."""
    return tool_parser is None and reasoning is None


async def postprocess(
    events: AsyncIterator[Event], tool_parser: ToolParser | None, reasoning: ThinkParser | None, max_calls: int | None = None
) -> AsyncIterator[Event]:
    """Apply the reasoning parser, then the tool parser, to each choice's text; calls after
    ``max_calls`` are dropped (``parallel_tool_calls: false``)."""
    if passes_through(tool_parser, reasoning):
        async for ev in events:
            yield ev
        return
    choices: dict[int, _Choice] = {}
    async for ev in events:
        if isinstance(ev, DeltaEvent):
            c = choices.setdefault(ev.index, _Choice(tool_parser, reasoning, max_calls))
            out = c.feed(ev.index, ev.text, False, ev.logprobs)
            if out is not None:
                yield out
        elif isinstance(ev, FinishEvent):
            c = choices.setdefault(ev.index, _Choice(tool_parser, reasoning, max_calls))
            out = c.feed(ev.index, "", True)
            if out is not None:
                yield out
            reason = ev.finish_reason
            if c.tools is not None and c.tools.n_calls and reason == "stop":
                reason = "tool_calls"
            yield FinishEvent(index=ev.index, finish_reason=reason)
        else:
            yield ev
