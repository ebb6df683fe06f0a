"""Helpers for parsers that re-parse the whole text and must stay monotonic."""

from __future__ import annotations

import json

__all__ = ["hold_partial", "raw_json_value", "JSON_DECODER"]

JSON_DECODER = json.JSONDecoder()


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
