"""GLM-4.5/4.6: ``<tool_call>name<arg_key>k</arg_key><arg_value>v</arg_value>…</tool_call>``."""

from __future__ import annotations

import re
from typing import Any

import orjson

from ..incremental import hold_partial
from .base import ParsedCall, ParseResult, ToolParser, call_parts, finish_content

__all__ = ["Glm4ToolParser"]

START, END = "<tool_call>", "</tool_call>"
_PAIR = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def _value(v: str) -> Any:
    try:
        return orjson.loads(v)
    except orjson.JSONDecodeError:
        return v


class Glm4ToolParser(ToolParser):
    name = "glm4"

    def parse(self, text: str, final: bool) -> ParseResult:
        parts: list[str] = []
        calls: list[ParsedCall] = []
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
            done = j != -1 or final
            call = self._call(body, done)
            if call is not None:
                calls.append(call)
            if j == -1:
                break
            pos = j + len(END)
        return ParseResult(content=finish_content(parts, final, bool(calls)), calls=calls)

    def _call(self, body: str, done: bool) -> ParsedCall | None:
        k = body.find("<arg_key>")
        head = body if k == -1 else body[:k]
        if k == -1 and not done and "\n" not in head.lstrip():
            return None  # the name may still grow
        lead = head.lstrip()
        name = lead.split("\n", 1)[0].strip() if "\n" in lead else lead.strip()
        if not name:
            return None
        pairs = [f"{orjson.dumps(m.group(1).strip()).decode()}: {orjson.dumps(_value(m.group(2).strip())).decode()}" for m in _PAIR.finditer(body)]
        args = "{" + ", ".join(pairs) + ("}" if done else "")
        return ParsedCall(name=name, arguments=args)

    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        out = []
        for c in calls:
            name, args = call_parts(c)
            kv = "".join(
                f"<arg_key>{k}</arg_key><arg_value>{v if isinstance(v, str) else orjson.dumps(v).decode()}</arg_value>"
                for k, v in (args.items() if isinstance(args, dict) else [])
            )
            out.append(f"{START}{name}\n{kv}{END}")
        return "\n".join(out)
