"""Pythonic tool calls (Llama 3.2 / Llama 4): ``[get_weather(city="Paris"), …]``.

Parsed with ``ast`` and ``ast.literal_eval`` on each argument — nothing is evaluated.
"""

from __future__ import annotations

import ast
from typing import Any

import orjson

from .base import ParsedCall, ParseResult, ToolParser, call_parts, finish_content

__all__ = ["PythonicToolParser"]


def _json_value(v: Any) -> Any:
    """A literal as JSON data: tuples and sets become lists; what JSON cannot hold (bytes,
    complex numbers, non-string keys) raises TypeError."""
    if isinstance(v, (list, tuple, set, frozenset)):
        items = sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v
        return [_json_value(x) for x in items]
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise TypeError("object keys must be strings")
        return {k: _json_value(x) for k, x in v.items()}
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    raise TypeError(f"{type(v).__name__} is not a JSON value")


def _calls(src: str) -> list[ParsedCall] | None:
    try:
        tree = ast.parse(src.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # a model can write anything
        return None
    node = tree.body
    if not isinstance(node, ast.List) or not node.elts:
        return None
    out = []
    for el in node.elts:
        if not (isinstance(el, ast.Call) and isinstance(el.func, ast.Name)) or el.args:
            return None
        try:
            args = {kw.arg: _json_value(ast.literal_eval(kw.value)) for kw in el.keywords if kw.arg}
            arguments = orjson.dumps(args).decode()
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError, orjson.JSONEncodeError):
            return None  # not a call the client could read: left as content
        out.append(ParsedCall(name=el.func.id, arguments=arguments))
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
