"""Llama 3.x JSON tool calls: ``{"name": ..., "parameters": {...}}`` (``;``-separated)."""

from __future__ import annotations

from typing import Any

import orjson

from ..incremental import hold_partial, raw_json_value
from .base import EnforcedFormat, ParseResult, ToolParser, call_parts, parse_json_call

__all__ = ["Llama3JsonToolParser"]

TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    enforced_format = EnforcedFormat("", "", "", "", "; ", "parameters")

    def parse(self, text: str, final: bool) -> ParseResult:
        s = text.lstrip()
        if s.startswith(TAG):
            s = s[len(TAG) :].lstrip()
        elif not final and TAG.startswith(s):
            return ParseResult(content="")
        if not s:
            return ParseResult(content="")
        if not s.startswith("{"):
            return ParseResult(content=s if final else hold_partial(s.rstrip(), TAG))
        calls = []
        rest = s
        while rest:
            raw, end = raw_json_value(rest)
            if raw is None:
                call = parse_json_call(rest, complete=final)
                if call is None and final:
                    return ParseResult(content=s)
                if call is not None:
                    calls.append(call)
                break
            call = parse_json_call(raw, complete=True)
            if call is None:
                return ParseResult(content=s if final else "")
            calls.append(call)
            rest = rest[end:].lstrip().lstrip(";").lstrip()
        return ParseResult(content="", calls=calls)

    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        out = []
        for c in calls:
            name, args = call_parts(c)
            out.append(orjson.dumps({"name": name, "parameters": args}).decode())
        return "; ".join(out)
