"""Tool-call parser contract and the streaming driver shared by every parser.

A parser is a pure function of the text generated so far: ``parse(text, final)``.
With ``final=False`` it must be *monotonic*: the content it returns and each call's
name/arguments only ever grow as text is appended. The streaming driver emits the
difference between successive parses, so streaming equals non-streaming and the result
does not depend on how the output was chunked.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import orjson

from ..incremental import raw_json_value

__all__ = [
    "EnforcedFormat",
    "ParsedCall",
    "ParseResult",
    "ToolParser",
    "ToolCallDelta",
    "StreamingToolExtractor",
    "parse_json_call",
    "finish_content",
    "new_call_id",
    "call_parts",
]


@dataclass
class ParsedCall:
    name: str | None
    arguments: str = ""  # raw JSON text (a growing prefix while streaming)


@dataclass
class ParseResult:
    content: str
    calls: list[ParsedCall] = field(default_factory=list)


@dataclass
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


_NAME_RE = re.compile(r'"name"\s*:\s*("(?:[^"\\]|\\.)*")')
_ARGS_RE = re.compile(r'"(?:arguments|parameters)"\s*:\s*')


def parse_json_call(body: str, complete: bool) -> ParsedCall | None:
    """``{"name": ..., "arguments"|"parameters": {...}}`` (possibly partial) → call."""
    m = _NAME_RE.search(body)
    try:
        name = orjson.loads(m.group(1)) if m else None
    except orjson.JSONDecodeError:  # a raw control character in the string: not a name
        name = None
    a = _ARGS_RE.search(body)
    args = ""
    if a is not None:
        rest = body[a.end() :]
        raw, _ = raw_json_value(rest)
        if raw is not None:
            if raw.startswith('"'):  # arguments sent as a JSON-encoded string
                raw = orjson.loads(raw)
            args = raw
        elif not rest.lstrip().startswith('"'):
            args = rest.lstrip()
            if complete:  # malformed at the end: keep what parses, else give up
                return None
    elif complete:
        if name is None:
            return None
        args = "{}"
    if name is None and complete:
        return None
    return ParsedCall(name=name, arguments=args)


def call_parts(call: dict[str, Any]) -> tuple[str, Any]:
    """(name, decoded arguments) of an OpenAI tool call from the message history."""
    fn = call.get("function", {})
    raw = fn.get("arguments") or "{}"
    try:
        return fn.get("name"), orjson.loads(raw)
    except orjson.JSONDecodeError:
        return fn.get("name"), {}


def finish_content(parts: list[str], final: bool, has_calls: bool) -> str:
    text = "".join(parts).lstrip()
    if final:
        return text.rstrip() if has_calls else text
    return text.rstrip()  # trailing whitespace waits until more text (or the end) decides


class EnforcedFormat(NamedTuple):
    """How a model writes its calls, for enforced generation: ``open`` call (``sep`` call)*
    ``close``, each call ``item_open`` + a JSON object ``{"name": …, key: {…}}`` + ``item_close``."""

    open: str
    close: str
    item_open: str
    item_close: str
    sep: str
    key: str


class ToolParser:
    """Base class. Subclasses set ``name`` and implement ``parse``."""

    name: ClassVar[str] = ""
    #: the calls' layout for enforced generation, or None (use hermes)
    enforced_format: ClassVar[EnforcedFormat | None] = None

    def parse(self, text: str, final: bool) -> ParseResult:
        raise NotImplementedError

    def format_calls(self, calls: list[dict[str, Any]]) -> str:
        """Render earlier assistant tool calls as this model would have written them."""
        out = []
        for c in calls:
            name, args = call_parts(c)
            out.append("<tool_call>\n" + orjson.dumps({"name": name, "arguments": args}).decode() + "\n</tool_call>")
        return "\n".join(out)


class StreamingToolExtractor:
    """Feeds text to a parser and emits content and tool-call deltas."""

    def __init__(self, parser: ToolParser, max_calls: int | None = None) -> None:
        """``max_calls``: calls after that many are dropped (``parallel_tool_calls: false``: 1)."""
        self.parser = parser
        self.max_calls = max_calls
        self.text = ""
        self._content_sent = 0
        self._calls: list[tuple[str, int]] = []  # (id, arguments chars sent)

    @property
    def n_calls(self) -> int:
        return len(self._calls)

    def feed(self, delta: str, final: bool = False) -> tuple[str, list[ToolCallDelta]]:
        self.text += delta
        r = self.parser.parse(self.text, final)
        content = r.content[self._content_sent :]
        self._content_sent = max(self._content_sent, len(r.content))
        out: list[ToolCallDelta] = []
        for i, call in enumerate(r.calls):
            if self.max_calls is not None and i >= self.max_calls:
                break
            if i >= len(self._calls):
                if call.name is None:
                    break
                cid = new_call_id()
                self._calls.append((cid, 0))
                out.append(ToolCallDelta(index=i, id=cid, name=call.name, arguments=""))
            cid, sent = self._calls[i]
            if len(call.arguments) > sent:
                out.append(ToolCallDelta(index=i, arguments=call.arguments[sent:]))
                self._calls[i] = (cid, len(call.arguments))
        return content, out
