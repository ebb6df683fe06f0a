"""DeepSeek-V3 / V3.1 tool calls with ``<｜tool▁call▁begin｜>`` markers."""

from __future__ import annotations

from typing import Any

from ..incremental import hold_partial, raw_json_value
from .base import ParsedCall, ParseResult, ToolParser, finish_content

__all__ = ["DeepSeekV3ToolParser"]

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"


class DeepSeekV3ToolParser(ToolParser):
    name = "deepseek_v3"

    def parse(self, text: str, final: bool) -> ParseResult:
        i = text.find(CALLS_BEGIN)
        if i == -1:
            return ParseResult(content=finish_content([text if final else hold_partial(text, CALLS_BEGIN)], final, False))
        calls: list[ParsedCall] = []
        body = text[i + len(CALLS_BEGIN) :]
        for chunk in body.split(CALL_BEGIN)[1:]:
            end = chunk.find(CALL_END)
            done = end != -1 or final
            call = self._call(chunk if end == -1 else chunk[:end], done)
            if call is None:
                break
            calls.append(call)
            if end == -1:
                break
        after = ""
        k = body.find(CALLS_END)
        if k != -1:
            after = body[k + len(CALLS_END) :]
        return ParseResult(content=finish_content([text[:i], after], final, bool(calls)), calls=calls)

    def _call(self, chunk: str, done: bool) -> ParsedCall | None:
        s = chunk.find(SEP)
        if s == -1:
            return None
        head, rest = chunk[:s], chunk[s + len(SEP) :]
        if head.strip() == "function":  # V3: function<sep>name\n```json\n{...}\n```
            nl = rest.find("\n")
            if nl == -1:
                return ParsedCall(name=rest.strip(), arguments="{}") if done and rest.strip() else None
            name, rest = rest[:nl].strip(), rest[nl + 1 :]
            rest = rest.lstrip()
            if rest.startswith("```json"):
                rest = rest[len("```json") :]
            elif "```json".startswith(rest):
                return ParsedCall(name=name, arguments="")
        else:  # V3.1: name<sep>{...}
            name = head.strip()
        raw, _ = raw_json_value(rest)
        if raw is not None:
            return ParsedCall(name=name, arguments=raw)
        return ParsedCall(name=name, arguments="{}" if done and not rest.strip() else rest.lstrip())

    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        items = "".join(
            f"{CALL_BEGIN}function{SEP}{c.get('function', {}).get('name')}\n```json\n"
            f"{c.get('function', {}).get('arguments') or '{}'}\n```{CALL_END}"
            for c in calls
        )
        return f"{CALLS_BEGIN}{items}{CALLS_END}"


