"""Reasoning parsers: split ``<think>…</think>`` from the answer, streaming or not."""

from __future__ import annotations

from dataclasses import dataclass

from ..incremental import hold_partial

__all__ = ["REASONING_PARSERS", "ThinkParser", "StreamingReasoningExtractor", "detect_reasoning_parser", "starts_in_reasoning"]


@dataclass
class ThinkParser:
    """``<think>`` reasoning (DeepSeek-R1, Qwen3, …).

    ``open_in_prompt``: the rendered prompt already ends inside ``<think>`` (templates that
    write the opening tag themselves), so the output starts as reasoning.
    """

    start: str = "<think>"
    end: str = "</think>"
    open_in_prompt: bool = False

    def parse(self, text: str, final: bool) -> tuple[str, str]:
        """(reasoning, content) for the text so far; monotonic when ``final`` is False."""
        s = text
        in_reasoning = self.open_in_prompt
        if not in_reasoning:
            lead = s.lstrip()
            if lead.startswith(self.start):
                in_reasoning = True
                s = lead[len(self.start) :]
            elif not final and self.start.startswith(lead):
                return "", ""  # could still become <think>
        if not in_reasoning:
            return "", s
        k = s.find(self.end)
        if k == -1:
            return (s if final else hold_partial(s, self.end)), ""
        return s[:k], s[k + len(self.end) :].lstrip("\n")


REASONING_PARSERS = {"deepseek_r1": "<think>", "qwen3": "<think>", "think": "<think>"}


def detect_reasoning_parser(template: str | None) -> str | None:
    return "deepseek_r1" if template and "</think>" in template else None


def starts_in_reasoning(prompt: str, start: str = "<think>", end: str = "</think>") -> bool:
    """Does the rendered prompt end inside an opened reasoning block?"""
    i = prompt.rfind(start)
    return i != -1 and prompt.find(end, i) == -1 and not prompt[i + len(start) :].strip()


class StreamingReasoningExtractor:
    def __init__(self, parser: ThinkParser) -> None:
        self.parser = parser
        self.text = ""
        self._r = 0
        self._c = 0

    def feed(self, delta: str, final: bool = False) -> tuple[str, str]:
        self.text += delta
        reasoning, content = self.parser.parse(self.text, final)
        dr, dc = reasoning[self._r :], content[self._c :]
        self._r = max(self._r, len(reasoning))
        self._c = max(self._c, len(content))
        return dr, dc
