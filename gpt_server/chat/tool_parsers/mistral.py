"""Mistral: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` or ``[TOOL_CALLS]name[ARGS]{...}``."""

from __future__ import annotations

from typing import Any

import orjson

from ..incremental import hold_partial, raw_json_value
from .base import (
    EnforcedFormat,
    ParsedCall,
    ParseResult,
    ToolParser,
    call_parts,
    finish_content,
    parse_json_call,
)

__all__ = ["MistralToolParser"]

TAG = "[TOOL_CALLS]"
ARGS = "[ARGS]"


class MistralToolParser(ToolParser):
    name = "mistral"
    enforced_format = EnforcedFormat("[TOOL_CALLS][", "]", "", "", ", ", "arguments")

    def parse(self, text: str, final: bool) -> ParseResult:
        i = text.find(TAG)
        if i == -1:
            return ParseResult(content=finish_content([text if final else hold_partial(text, TAG)], final, False))
        content = text[:i]
        body = text[i + len(TAG) :]
        calls = self._array(body, final) if body.lstrip().startswith("[") else self._named(body, final)
        return ParseResult(content=finish_content([content], final, bool(calls)), calls=calls)

    def _array(self, body: str, final: bool) -> list[ParsedCall]:
        rest = body.lstrip()[1:]
        calls = []
        while True:
            rest = rest.lstrip().lstrip(",").lstrip()
            if not rest or rest.startswith("]"):
                break
            raw, end = raw_json_value(rest)
            if raw is None:
                call = parse_json_call(rest, complete=final)
                if call is not None:
                    calls.append(call)
                break
            call = parse_json_call(raw, complete=True)
            if call is not None:
                calls.append(call)
            rest = rest[end:]
        return calls

    def _named(self, body: str, final: bool) -> list[ParsedCall]:
        calls = []
        for chunk in body.split(TAG):
            j = chunk.find(ARGS)
            if j == -1:
                name = chunk.strip()
                if final and name:
                    calls.append(ParsedCall(name=name, arguments="{}"))
                break
            name = chunk[:j].strip()
            rest = chunk[j + len(ARGS) :]
            raw, _ = raw_json_value(rest)
            calls.append(ParsedCall(name=name, arguments=raw if raw is not None else rest.lstrip()))
        return calls

    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        items = []
        for c in calls:
            name, args = call_parts(c)
            items.append({"name": name, "arguments": args})
        return TAG + orjson.dumps(items).decode()
