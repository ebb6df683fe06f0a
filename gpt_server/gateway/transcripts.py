"""Transcripts as OpenAI answers them: json, text, srt, vtt and verbose_json bodies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..protocol.audio import TranscriptResult

__all__ = ["format_transcript", "srt_timestamp", "vtt_timestamp"]


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, int(round(seconds * 1000)))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt_timestamp(seconds: float) -> str:
    return _clock(seconds, ",")


def vtt_timestamp(seconds: float) -> str:
    return _clock(seconds, ".")


def _cues(result: TranscriptResult) -> list[tuple[float, float, str]]:
    return [(s.start, max(s.end, s.start), s.text.strip()) for s in result.segments if s.text.strip()]


def _srt(result: TranscriptResult) -> str:
    blocks = [f"{i}\n{srt_timestamp(a)} --> {srt_timestamp(b)}\n{t}\n" for i, (a, b, t) in enumerate(_cues(result), 1)]
    return "\n".join(blocks)


def _vtt(result: TranscriptResult) -> str:
    blocks = [f"{vtt_timestamp(a)} --> {vtt_timestamp(b)}\n{t}\n" for a, b, t in _cues(result)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def format_transcript(
    result: TranscriptResult, response_format: str, granularities: Sequence[str]
) -> tuple[str | dict[str, Any], str]:
    """The body and media type OpenAI answers for ``response_format``."""
    if response_format == "text":
        return result.text + "\n", "text/plain; charset=utf-8"
    if response_format == "srt":
        return _srt(result), "text/plain; charset=utf-8"
    if response_format == "vtt":
        return _vtt(result), "text/vtt; charset=utf-8"
    if response_format == "verbose_json":
        body = result.model_dump(exclude_none=True)
        if granularities and "segment" not in granularities:
            body.pop("segments", None)
        if "word" not in granularities:
            body.pop("words", None)
        return body, "application/json"
    return {"text": result.text}, "application/json"
