"""Pythonic tool calls (Llama 3.2 / Llama 4): ``[get_weather(city="Paris"), …]``.

Parsed with ``ast`` and ``ast.literal_eval`` on each argument — nothing is evaluated.
"""

from __future__ import annotations

import ast
from typing import Any

import orjson

from .base import ParsedCall, ParseResult, ToolParser, call_parts, finish_content

__all__ = ["PythonicToolParser"]


def _calls(src: str) -> list[ParsedCall] | None:
    try:
        tree = ast.parse(src.strip(), mode="eval")
    except SyntaxError:
        return None
    node = tree.body
    if not isinstance(node, ast.List) or not node.elts:
        return None
    out = []
    for el in node.elts:
        if not (isinstance(el, ast.Call) and isinstance(el.func, ast.Name)) or el.args:
            return None
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in el.keywords if kw.arg}
        except (ValueError, SyntaxError):
            return None
        out.append(ParsedCall(name=el.func.id, arguments=orjson.dumps(args).decode()))
    return out


class PythonicToolParser(ToolParser):
    name = "pythonic"

    def parse(self, text: str, final: bool) -> ParseResult:
        s = text.strip()
        if s.startswith("<|python_start|>"):
            s = s[len("<|python_start|>") :].removesuffix("<|python_end|>").strip()
        if s.startswith("["):
            if not final:
                return ParseResult(content="")  # may be a call list: decide at the end
            calls = _calls(s)
            if calls is not None:
                return ParseResult(content="", calls=calls)
        return ParseResult(content=finish_content([text], final, False))

    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        items = []
        for c in calls:
            name, args = call_parts(c)
            kv = ", ".join(f"{k}={v!r}" for k, v in (args.items() if isinstance(args, dict) else []))
            items.append(f"{name}({kv})")
        return "[" + ", ".join(items) + "]"
