"""Qwen3-Coder: XML-style calls with one element per parameter::

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

Parameter values are raw text (one leading and one trailing newline dropped). The parser does
not see the tools' schemas, so a value becomes JSON data when it parses as JSON (``3``,
``true``, ``null``, ``[1, 2]``, ``{"a": 1}``) and a string otherwise: a string parameter whose
value reads as a number arrives as that number. A value ends at ``</parameter>``, or at the
next ``<parameter=`` / ``</function>`` when the model leaves the tag out. A call is emitted once
``<function=name>`` is complete and its arguments grow a parameter at a time; the
``<tool_call>`` wrapper may be left out, and one wrapper may hold several functions.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ..incremental import hold_partial, skip_ws
from .base import ParsedCall, ParseResult, ToolParser, call_parts, finish_content

__all__ = ["Qwen3CoderToolParser"]

START, END = "<tool_call>", "</tool_call>"
FUNC, FUNC_END = "<function=", "</function>"
PARAM, PARAM_END = "<parameter=", "</parameter>"
_NAME = re.compile(r"[^\s<>]{1,64}")


def _value(raw: str) -> Any:
    raw = raw.removeprefix("\n").removesuffix("\n")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw


def _find_first(s: str, start: int, *markers: str) -> tuple[int, str]:
    best, which = -1, ""
    for m in markers:
        k = s.find(m, start)
        if k != -1 and (best == -1 or k < best):
            best, which = k, m
    return best, which


def _function(s: str, i: int, final: bool) -> tuple[ParsedCall | None, int, bool]:
    """The function element at ``i`` (``<function=``): (call, end, open).

    (None, -1, _) while its name is unfinished; (None, end, _) when it is not a call."""
    gt = s.find(">", i + len(FUNC))
    if gt == -1:
        return None, (len(s) if final else -1), False
    name = s[i + len(FUNC) : gt].strip()
    if not _NAME.fullmatch(name):
        return None, gt + 1, False
    close = s.find(FUNC_END, gt + 1)
    body = s[gt + 1 : close if close != -1 else len(s)]
    done = close != -1 or final
    pairs: list[str] = []
    p = 0
    while True:
        k = body.find(PARAM, p)
        if k == -1:
            break
        kgt = body.find(">", k + len(PARAM))
        if kgt == -1:
            break
        e, which = _find_first(body, kgt + 1, PARAM_END, PARAM)
        if e == -1:
            if not done:
                break
            e, which = len(body), ""
        raw = body[kgt + 1 : e]
        if which == "" and close == -1:  # cut off at the end: drop a half-written closing tag
            raw = hold_partial(raw, PARAM_END, FUNC_END, END)
        key = body[k + len(PARAM) : kgt].strip()
        pairs.append(f"{orjson.dumps(key).decode()}: {orjson.dumps(_value(raw)).decode()}")
        p = e + (len(PARAM_END) if which == PARAM_END else 0)
    args = "{" + ", ".join(pairs) + ("}" if done else "")
    return ParsedCall(name=name, arguments=args), (close + len(FUNC_END) if close != -1 else len(s)), close == -1



class Qwen3CoderToolParser(ToolParser):
    name = "qwen3_coder"

    def parse(self, text: str, final: bool) -> ParseResult:
        parts: list[str] = []
        calls: list[ParsedCall] = []
        pos = 0
        while True:
            i, which = _find_first(text, pos, START, FUNC)
            if i == -1:
                tail = text[pos:]
                parts.append(tail if final else hold_partial(tail, START, FUNC))
                break
            parts.append(text[pos:i])
            if which == FUNC:
                call, end, is_open = _function(text, i, final)
                if call is None and end == -1:
                    break  # the name is still coming
                if call is None:
                    parts.append(text[i:end])
                else:
                    calls.append(call)
                if is_open:
                    break
                pos = end
                continue
            end = self._wrapper(text, i, final, parts, calls)
            if end == -1:
                break
            pos = end
        return ParseResult(content=finish_content(parts, final, bool(calls)), calls=calls)

    def _wrapper(self, text: str, i: int, final: bool, parts: list[str], calls: list[ParsedCall]) -> int:
        """``<tool_call>`` at ``i`` holding function elements; where it ends, -1 if open."""
        p = i + len(START)
        found = False
        while True:
            p = skip_ws(text, p)
            rest = text[p:]
            if rest.startswith(END):
                if not found:
                    parts.append(text[i : p + len(END)])
                return p + len(END)
            if not rest or (not final and (FUNC.startswith(rest) or (found and END.startswith(rest)))):
                if final:
                    if not found:
                        parts.append(text[i:])
                    return len(text)
                return -1
            if not rest.startswith(FUNC):
                if not found:  # not Qwen3-Coder markup: the tag is text
                    parts.append(text[i : i + len(START)])
                    return i + len(START)
                return p  # what follows the calls is content
            call, end, is_open = _function(text, p, final)
            if call is None:
                if end == -1:
                    return -1
                if not found:
                    parts.append(text[i:end])
                else:
                    parts.append(text[p:end])
                return end
            calls.append(call)
            found = True
            if is_open:
                return -1 if not final else len(text)
            p = end

    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        out = []
        for c in calls:
            name, args = call_parts(c)
            params = "".join(
                f"<parameter={k}>\n{v if isinstance(v, str) else orjson.dumps(v).decode()}\n</parameter>\n"
                for k, v in (args.items() if isinstance(args, dict) else [])
            )
            out.append(f"{START}\n<function={name}>\n{params}</function>\n{END}")
        return "\n".join(out)
