"""Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``."""

from __future__ import annotations

from ..incremental import hold_partial
from .base import ParseResult, ToolParser, finish_content, parse_json_call

__all__ = ["HermesToolParser"]

START, END = "<tool_call>", "</tool_call>"


class HermesToolParser(ToolParser):
    name = "hermes"
    enforced_format = ("<tool_call>\n", "\n</tool_call>", "arguments")

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
            j = text.find(END, i + len(START))
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
