"""Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``."""

from __future__ import annotations

from ..incremental import hold_partial, raw_json_value
from .base import EnforcedFormat, ParseResult, ToolParser, finish_content, parse_json_call

__all__ = ["HermesToolParser"]

START, END = "<tool_call>", "</tool_call>"


def _call_end(text: str, start: int, final: bool) -> int:
    """Where the closing tag of the call starting at ``start`` is, or -1 if not yet seen.

    A closing tag inside a JSON string of the arguments does not end the call: when the
    body is JSON, the tag is looked for after the JSON value only."""
    raw, end = raw_json_value(text[start:])
    if raw is not None:
        return text.find(END, start + end)
    j = text.find(END, start)
    if j == -1 or final:
        return j
    # the JSON is unfinished: a tag before its end may sit inside a string; wait
    # unless the text up to the tag is JSON that simply failed to parse as a value
    return j if raw_json_value(text[start:j])[0] is not None else -1


class HermesToolParser(ToolParser):
    name = "hermes"
    enforced_format = EnforcedFormat("", "", "<tool_call>\n", "\n</tool_call>", "\n", "arguments")

    def parse(self, text: str, final: bool) -> ParseResult:
        parts: list[str] = []
        calls = []
        pos = 0
        while True:
            i = text.find(START, pos)
            if i == -1:
                tail = text[pos:]
                parts.append(tail if final else hold_partial(tail, START))
                break
            parts.append(text[pos:i])
            j = _call_end(text, i + len(START), final)
            body = text[i + len(START) : j if j != -1 else len(text)]
            call = parse_json_call(body, complete=j != -1 or final)
            if call is not None:
                calls.append(call)
            elif j != -1 or final:
                parts.append(text[i : j + len(END) if j != -1 else len(text)])  # not a call: keep as text
            if j == -1:
                break
            pos = j + len(END)
        return ParseResult(content=finish_content(parts, final, bool(calls)), calls=calls)
