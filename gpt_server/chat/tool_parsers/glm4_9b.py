"""GLM-4-9B-chat / GLM-4-0414 and ChatGLM3-6B: the call's name on its own line, then its arguments.

GLM-4 writes the arguments as a JSON object, ChatGLM3 as ``tool_call(k=v, …)`` in a Python
code fence::

    get_weather                        get_weather
    {"city": "Paris"}                  ```python
                                       tool_call(city="Paris")
                                       ```

In the models' own chat format the name is the metadata of an assistant turn, so a call is
recognised at the start of the output, after ``<|assistant|>`` (when special tokens are kept)
and right after another call; text after that is content. A GLM-4 call is certain once
``name\\n{"`` (or ``{}``) is seen and its arguments stream from there; a call cut off at the
end keeps the arguments it got. A ChatGLM3 call is decided when its fence closes (or at the
end): ``tool_call(…)`` is read with ``ast.literal_eval`` on each argument, never evaluated,
and anything else stays content.
"""

from __future__ import annotations

import ast
import re
import warnings
from typing import Any

import orjson

from ..incremental import Pending, SpanScanner, raw_json_value, skip_ws
from .base import ParsedCall, ParseResult, ToolParser, call_parts, finish_content
from .pythonic import _json_value

__all__ = ["Glm4ChatToolParser", "ChatGLM3ToolParser"]

TURN = "<|assistant|>"
FENCE = "```"
_NAME = re.compile(r"[A-Za-z_][\w.\-]{0,63}")
_NAME_PREFIX = re.compile(r"[A-Za-z_][\w.\-]{0,63}[ \t]*")




def _tool_call_args(code: str) -> str | None:
    """``tool_call(a=1, **{"b-c": 2})`` → its arguments as JSON, or None."""
    try:
        with warnings.catch_warnings():  # odd literals warn; the text is the model's, not ours
            warnings.simplefilter("ignore", SyntaxWarning)
            node = ast.parse(code.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # a model can write anything
        return None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "tool_call") or node.args:
        return None
    args: dict[str, Any] = {}
    try:
        for kw in node.keywords:
            value = _json_value(ast.literal_eval(kw.value))
            if kw.arg is not None:
                args[kw.arg] = value
            elif isinstance(value, dict):
                args.update(value)
            else:
                return None
        return orjson.dumps(args).decode()
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError, orjson.JSONEncodeError):
        return None


def _fenced_call(s: str, i: int, final: bool) -> tuple[str | None, int]:
    """The fence at ``i`` (after the name line): (arguments JSON or None if not a call, end)."""
    nl = s.find("\n", i + len(FENCE))
    if nl == -1:
        if final:
            return None, len(s)
        raise Pending
    lang = s[i + len(FENCE) : nl].strip().lower()
    close = s.find(FENCE, nl)
    if close == -1 and not final:
        raise Pending
    body = s[nl + 1 : close if close != -1 else len(s)]
    end = close + len(FENCE) if close != -1 else len(s)
    if lang in ("", "python"):
        return _tool_call_args(body), end
    if lang == "json":
        raw, tail = raw_json_value(body)
        if raw is not None and raw.startswith("{") and not body[tail:].strip():
            return raw, end
    return None, end


def _call(s: str, i: int, final: bool, sp: SpanScanner | None) -> tuple[ParsedCall | None, int]:
    """The call starting at ``i``: (call, end), (None, i) when the text there is content,
    (call, -1) for a call whose arguments are still streaming. Raises Pending."""
    nl = s.find("\n", i)
    line = s[i : nl if nl != -1 else len(s)]
    if nl == -1:
        if not final and _NAME_PREFIX.fullmatch(line):
            raise Pending
        return None, i
    name = line.strip()
    if not _NAME.fullmatch(name):
        return None, i
    j = skip_ws(s, nl + 1)
    rest = s[j:]
    if not rest:
        if final:
            return None, i
        raise Pending
    if rest.startswith(FENCE) or (not final and FENCE.startswith(rest)):
        if not rest.startswith(FENCE):
            raise Pending
        args, end = _fenced_call(s, j, final)
        return (ParsedCall(name=name, arguments=args), end) if args is not None else (None, i)
    if not rest.startswith("{"):
        return None, i
    k = skip_ws(s, j + 1)
    if k == len(s):
        if final:
            return None, i
        raise Pending
    if s[k] not in '"}':
        return None, i
    close = sp.end(s, j) if sp is not None else len(s)  # cheap while the arguments stream
    raw, end = raw_json_value(s[j:close]) if close is not None else (None, -1)
    if raw is not None:
        return ParsedCall(name=name, arguments=raw), j + end
    return ParsedCall(name=name, arguments=rest), -1  # streaming (or cut off at the end)


def _segment(s: str, final: bool, sp: SpanScanner | None, parts: list[str], calls: list[ParsedCall]) -> None:
    """One assistant turn: calls at its start and after each other, then content."""
    pos = 0
    while True:
        i = skip_ws(s, pos)
        if i == len(s):
            parts.append(s[pos:])
            return
        try:
            call, end = _call(s, i, final, sp)
        except Pending:
            parts.append(s[pos:i])
            return
        if call is None:
            parts.append(s[pos:])
            return
        parts.append(s[pos:i])
        calls.append(call)
        if end == -1:
            return
        pos = end


class Glm4ChatToolParser(ToolParser):
    name = "glm4_9b"

    def __init__(self) -> None:
        self._spans = SpanScanner()

    def parse(self, text: str, final: bool) -> ParseResult:
        parts: list[str] = []
        calls: list[ParsedCall] = []
        segments = text.split(TURN)
        if not final:  # a partial ``<|assistant|>`` at the end waits
            tail = segments[-1]
            for k in range(min(len(TURN) - 1, len(tail)), 0, -1):
                if tail.endswith(TURN[:k]):
                    segments[-1] = tail[:-k]
                    break
        for n, seg in enumerate(segments):
            is_last = n == len(segments) - 1  # the others are complete turns
            _segment(seg, final or not is_last, self._spans if is_last else None, parts, calls)
        return ParseResult(content=finish_content(parts, final, bool(calls)), calls=calls)

    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        out = []
        for c in calls:
            name, args = call_parts(c)
            out.append(f"{name}\n{orjson.dumps(args).decode()}")
        return "\n".join(out)


class ChatGLM3ToolParser(Glm4ChatToolParser):
    """Same reading; earlier calls are written back in ChatGLM3's ``tool_call(…)`` fence."""

    name = "chatglm3"

    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        out = []
        for c in calls:
            name, args = call_parts(c)
            items = args.items() if isinstance(args, dict) else []
            if all(isinstance(k, str) and k.isidentifier() for k, _ in items):
                kv = ", ".join(f"{k}={v!r}" for k, v in items)
            else:
                kv = "**" + repr(dict(items))
            out.append(f"{name}\n{FENCE}python\ntool_call({kv})\n{FENCE}")
        return "\n".join(out)
