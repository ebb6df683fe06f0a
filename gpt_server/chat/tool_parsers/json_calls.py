"""Calls written as plain JSON objects ``{"name": ..., "arguments": {...}}`` (Qwen2.5-Coder and
other models that answer without their template's tags).

A call may stand bare at the start of a line, sit in a ```` ```json ```` (or unlabelled) fence,
or in ``<tool_call>`` tags; several may follow each other, a JSON array of call objects counts
too, and text may come before, between and after. An object is a call when its keys are
``name`` (a function name) and ``arguments`` or ``parameters``; any other JSON object, fence or
array stays content, whole. When ``name`` comes first the call is emitted once ``"arguments":``
follows and its arguments stream; otherwise it is decided when the object is complete. A
``{`` in the middle of a line is text.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ..incremental import Pending, SpanScanner, hold_partial, raw_json_value, skip_ws
from .base import EnforcedFormat, ParsedCall, ParseResult, ToolParser, call_parts, finish_content

__all__ = ["JsonToolParser"]

FENCE = "```"
TAG, TAG_END = "<tool_call>", "</tool_call>"
_LINE_BRACE = re.compile(r"[ \t]*[{\[]")
_NEXT_LINE_BRACE = re.compile(r"\n[ \t]*[{\[]")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NAME = re.compile(r"[A-Za-z_][\w.\-]{0,63}")
_ARG_KEYS = ("arguments", "parameters")




def _string_at(s: str, i: int, final: bool) -> tuple[str, int] | None:
    """The JSON string at ``i``: (value, end); None if no string is there. Raises Pending."""
    if i == len(s):
        if final:
            return None
        raise Pending
    if s[i] != '"':
        return None
    m = _STRING.match(s, i)
    if m is None:
        if final:
            return None
        raise Pending
    try:
        return orjson.loads(m.group()), m.end()
    except orjson.JSONDecodeError:
        return None


def _expect(s: str, i: int, ch: str, final: bool) -> int | None:
    """Position after ``ch`` (whitespace before it skipped), None if something else is there."""
    i = skip_ws(s, i)
    if i == len(s):
        if final:
            return None
        raise Pending
    return i + 1 if s[i] == ch else None


def _as_call(obj: Any) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not _NAME.fullmatch(obj["name"]):
        return None
    keys = [k for k in _ARG_KEYS if k in obj]
    if len(keys) != 1 or set(obj) != {"name", keys[0]}:
        return None
    args = obj[keys[0]]
    if isinstance(args, str):  # arguments sent as a JSON-encoded string
        try:
            args = orjson.loads(args)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ParsedCall(name=obj["name"], arguments=orjson.dumps(args).decode())


def _whole(s: str, i: int, final: bool, sp: SpanScanner) -> tuple[list[ParsedCall] | None, int]:
    """The complete value at ``i`` read as one call or an array of calls: (calls or None, end)."""
    end = sp.end(s, i)
    if end is None:
        if final:
            return None, len(s)
        raise Pending
    try:
        value = orjson.loads(s[i:end])
    except orjson.JSONDecodeError:
        return None, end
    items = value if isinstance(value, list) and value else [value]
    calls = [_as_call(v) for v in items]
    if any(c is None for c in calls):
        return None, end
    return [c for c in calls if c is not None], end


def _object(s: str, i: int, final: bool, sp: SpanScanner) -> tuple[list[ParsedCall] | None, int]:
    """The object at ``i``: (calls, end), end -1 while a call's arguments stream; (None, end)
    for JSON that is not a call (end: where it stops, or the end of the text); (None, i + 1)
    for a brace that does not start JSON. Raises Pending."""
    key1 = _string_at(s, skip_ws(s, i + 1), final)
    if key1 is None:
        return None, i + 1
    if key1[0] in _ARG_KEYS:
        return _whole(s, i, final, sp)
    if key1[0] != "name" or (p := _expect(s, key1[1], ":", final)) is None:
        return None, sp.end(s, i) or len(s)
    name = _string_at(s, skip_ws(s, p), final)
    if name is None or not _NAME.fullmatch(name[0]) or (p := _expect(s, name[1], ",", final)) is None:
        return None, sp.end(s, i) or len(s)
    key2 = _string_at(s, skip_ws(s, p), final)
    if key2 is None or key2[0] not in _ARG_KEYS or (p := _expect(s, key2[1], ":", final)) is None:
        return None, sp.end(s, i) or len(s)
    a = skip_ws(s, p)
    if a == len(s):
        if final:
            return None, len(s)
        raise Pending
    if s[a] != "{":  # arguments as a JSON-encoded string (or not an object): read whole
        return _whole(s, i, final, sp)
    close = sp.end(s, a)  # cheap while the arguments stream; parsed once they close
    raw, end = raw_json_value(s[a:close]) if close is not None else (None, -1)
    if raw is None:
        return [ParsedCall(name=name[0], arguments=s[a:])], (len(s) if final else -1)
    call = ParsedCall(name=name[0], arguments=raw)
    q = skip_ws(s, a + end)
    if q < len(s) and s[q] == "}":
        return [call], q + 1
    if q == len(s) or s[q] == ",":  # not closed yet, or more keys: the object's end ends the call
        close = sp.end(s, i)
        if close is not None:
            return [call], close
        return [call], (len(s) if final else -1)
    return [call], q  # not a clean close: what follows is content


def _value(s: str, i: int, final: bool, sp: SpanScanner) -> tuple[list[ParsedCall] | None, int]:
    """A ``{`` or ``[`` at ``i``: see ``_object``; arrays are read whole."""
    if s[i] == "{":
        return _object(s, i, final, sp)
    k = skip_ws(s, i + 1)
    if k == len(s):
        if final:
            return None, len(s)
        raise Pending
    if s[k] != "{":
        return None, i + 1
    first = _string_at(s, skip_ws(s, k + 1), final)
    if first is None or first[0] not in ("name", *_ARG_KEYS):
        return None, sp.end(s, i) or len(s)
    return _whole(s, i, final, sp)


def _block(s: str, body: int, closer: str, final: bool, sp: SpanScanner) -> tuple[list[ParsedCall] | None, int]:
    """Calls between an opener ending at ``body`` and ``closer``: (calls, end), end -1 while
    open; (None, end) when the block is not calls (end: its closer, or the end of the text)."""
    calls: list[ParsedCall] = []

    def not_calls() -> tuple[list[ParsedCall] | None, int]:
        c = s.find(closer, body)
        return None, (c + len(closer) if c != -1 else len(s))

    p = body
    while True:
        p = skip_ws(s, p)
        rest = s[p:]
        if rest.startswith(closer):
            return (calls, p + len(closer)) if calls else not_calls()
        if not rest or (not final and closer.startswith(rest)):
            if final:
                return (calls, len(s)) if calls else (None, len(s))
            if calls:
                return calls, -1
            raise Pending
        if rest[0] not in "{[":
            return (calls, p) if calls else not_calls()
        try:
            got, end = _value(s, p, final, sp)
        except Pending:
            if calls:
                return calls, -1
            raise
        if got is None:
            return (calls, p) if calls else not_calls()
        calls.extend(got)
        if end == -1:
            return calls, -1
        p = end


def _fence(s: str, i: int, final: bool, sp: SpanScanner) -> tuple[list[ParsedCall] | None, int]:
    nl = s.find("\n", i + len(FENCE))
    lang = s[i + len(FENCE) : nl if nl != -1 else len(s)].strip().lower()
    if nl == -1:
        if not final and "json".startswith(lang):
            raise Pending
        return None, i + len(FENCE)
    if lang not in ("", "json"):
        c = s.find(FENCE, nl)
        return None, (c + len(FENCE) if c != -1 else len(s))
    return _block(s, nl + 1, FENCE, final, sp)


def _next_start(s: str, pos: int) -> tuple[int, str]:
    """The next place a call may start at or after ``pos``: (where, the token there), -1 if none."""
    m = _LINE_BRACE.match(s, pos) if pos == 0 or s[pos - 1] == "\n" else None
    if m is None and (n := _NEXT_LINE_BRACE.search(s, pos)) is not None:
        m = _LINE_BRACE.match(s, n.start() + 1)
    best, token = (m.start(), m.group()) if m is not None else (-1, "")
    for marker in (FENCE, TAG):  # only before the brace: a long text is not searched to its end
        k = s.find(marker, pos, len(s) if best == -1 else best + len(marker) - 1)
        if k != -1 and (best == -1 or k < best):
            best, token = k, marker
    return best, token


class JsonToolParser(ToolParser):
    name = "json"
    enforced_format = EnforcedFormat("", "", "", "", "\n", "arguments")

    def __init__(self) -> None:
        self._spans = SpanScanner()

    def parse(self, text: str, final: bool) -> ParseResult:
        parts: list[str] = []
        calls: list[ParsedCall] = []
        pos = 0
        after_call = False
        while True:
            start, token = _next_start(text, pos)
            if after_call:  # a call may follow another on the same line
                k = skip_ws(text, pos)
                if k < len(text) and text[k] in "{[" and (start == -1 or k <= start):
                    start, token = k, text[k]
            if start == -1:
                tail = text[pos:]
                parts.append(tail if final else hold_partial(tail, FENCE, TAG))
                break
            parts.append(text[pos:start])
            brace = start + len(token) - 1 if token not in (FENCE, TAG) else start
            try:
                if token == FENCE:
                    got, end = _fence(text, start, final, self._spans)
                elif token == TAG:
                    got, end = _block(text, start + len(TAG), TAG_END, final, self._spans)
                else:
                    got, end = _value(text, brace, final, self._spans)
            except Pending:
                break
            if got is None:
                parts.append(text[start:end])
                after_call = False
            else:
                calls.extend(got)
                after_call = True
            if end == -1:
                break
            pos = end
        return ParseResult(content=finish_content(parts, final, bool(calls)), calls=calls)

    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        out = []
        for c in calls:
            name, args = call_parts(c)
            out.append(orjson.dumps({"name": name, "arguments": args}).decode())
        return "\n".join(out)
