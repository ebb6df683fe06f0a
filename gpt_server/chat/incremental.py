"""Helpers for parsers that re-parse the whole text and must stay monotonic."""

from __future__ import annotations

import json
import re

__all__ = ["hold_partial", "raw_json_value", "JSON_DECODER", "SpanScanner", "skip_ws", "Pending", "WS"]

JSON_DECODER = json.JSONDecoder()
WS = " \t\r\n"


class Pending(Exception):
    """The text so far does not decide yet (a parser waits for more)."""


def skip_ws(s: str, i: int) -> int:
    """The first index at or after ``i`` that is not JSON whitespace."""
    while i < len(s) and s[i] in WS:
        i += 1
    return i


def hold_partial(text: str, *markers: str) -> str:
    """Drop a suffix of ``text`` that could be the start of one of ``markers``."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:k]):
                best = k
                break
    return text[: len(text) - best] if best else text


def raw_json_value(text: str) -> tuple[str | None, int]:
    """The raw text of the JSON value at the start of ``text`` (after whitespace).

    Returns (raw, end) when the value is complete, (None, -1) otherwise.
    """
    stripped = text.lstrip()
    offset = len(text) - len(stripped)
    try:
        _, end = JSON_DECODER.raw_decode(stripped)
    except json.JSONDecodeError:
        return None, -1
    return stripped[:end], offset + end


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*(")?|[{}\[\]]')


class SpanScanner:
    """Where bracketed JSON-like values end (strings respected, validity not), remembered
    between the parses of one growing text, so a long value is scanned once rather than once
    per delta. One per parser instance; results do not depend on what it remembers."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[str, int]] = {}  # value start → (text scanned, depth at its end)

    def end(self, s: str, i: int) -> int | None:
        """End of the value starting at ``s[i]`` (a ``{`` or ``[``), or None while it is open."""
        prefix, depth = self._seen.get(i, ("", 0))
        k = len(prefix) if prefix and s.startswith(prefix) else i
        if k == i:
            depth = 0
        for m in _TOKEN.finditer(s, k):
            ch = m.group()[0]
            if ch == '"':
                if m.group(1) is None:  # the string runs to the end of the text
                    self._seen[i] = (s[: m.start()], depth)
                    return None
            elif ch in "{[":
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    return m.end()
        self._seen[i] = (s, depth)
        return None
