"""The chat layer's contract for each model-specific tool-call format: a scripted model output,
cut into token-sized deltas for two interleaved choices, goes through ``postprocess`` (the
step every local engine runs) and comes out as OpenAI tool-call deltas: per call one delta
with ``index``, ``id`` and ``name`` first, then argument pieces that add up to the call's JSON
arguments, ``finish_reason`` ``tool_calls``, and the content around the calls unchanged."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import orjson
import pytest

from gpt_server.chat.postprocess import postprocess
from gpt_server.chat.reasoning import ThinkParser
from gpt_server.chat.tool_parsers import get_tool_parser
from gpt_server.protocol.worker import DeltaEvent, Event, FinishEvent

WEATHER = {"city": "Paris", "days": 3}
BOOK = {"to": "Rome", "seats": ["12A", "12B"], "window": True}

# parser → (model output, the content around the calls)
OUTPUTS = {
    "glm4_9b": ('get_weather\n{"city": "Paris", "days": 3}\nbook\n{"to": "Rome", "seats": ["12A", "12B"], "window": true}', ""),
    "chatglm3": (
        "\n Let me check.<|assistant|>get_weather\n ```python\ntool_call(city='Paris', days=3)\n```"
        "<|assistant|>book\n ```python\ntool_call(to='Rome', seats=['12A', '12B'], window=True)\n```",
        "Let me check.",
    ),
    "qwen3_coder": (
        "I'll look both up.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n"
        "</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=book>\n<parameter=to>\nRome\n</parameter>\n"
        '<parameter=seats>\n["12A", "12B"]\n</parameter>\n<parameter=window>\ntrue\n</parameter>\n</function>\n</tool_call>',
        "I'll look both up.",
    ),
    "json": (
        'Sure.\n```json\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n```\n'
        '```json\n{"name": "book", "arguments": {"to": "Rome", "seats": ["12A", "12B"], "window": true}}\n```',
        "Sure.",
    ),
}


def _tokens(text: str, rng: random.Random) -> list[str]:
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 4)
        out.append(text[i : i + n])
        i += n
    return out


async def _script(pieces: dict[int, list[str]]) -> AsyncIterator[Event]:
    """Deltas of several choices interleaved, each choice finishing with ``stop``."""
    queues = {i: list(p) for i, p in pieces.items()}
    while queues:
        for i in list(queues):
            if queues[i]:
                yield DeltaEvent(index=i, text=queues[i].pop(0))
            else:
                del queues[i]
                yield FinishEvent(index=i, finish_reason="stop")


def _run(parser_name: str, text: str, seed: int, max_calls: int | None = None, think: str = "") -> dict[int, dict]:
    rng = random.Random(seed)
    pieces = {i: _tokens(think + text, rng) for i in (0, 1)}

    async def go() -> list[Event]:
        reasoning = ThinkParser() if think else None
        return [ev async for ev in postprocess(_script(pieces), get_tool_parser(parser_name), reasoning, max_calls)]

    result: dict[int, dict] = {i: {"content": "", "reasoning": "", "calls": {}, "finish": None} for i in pieces}
    for ev in asyncio.run(go()):
        r = result[ev.index]
        if isinstance(ev, FinishEvent):
            assert r["finish"] is None
            r["finish"] = ev.finish_reason
            continue
        assert isinstance(ev, DeltaEvent) and r["finish"] is None, "nothing after the finish"
        r["content"] += ev.text
        r["reasoning"] += ev.reasoning or ""
        for d in ev.tool_calls or []:
            if d.id is not None:
                assert d.index not in r["calls"] and d.index == len(r["calls"]), "one header per call, in index order"
                assert d.id.startswith("call_") and d.name
                r["calls"][d.index] = {"id": d.id, "name": d.name, "arguments": d.arguments}
            else:
                assert d.name is None and d.index in r["calls"], "argument pieces come after the call's header"
                r["calls"][d.index]["arguments"] += d.arguments
    return result


@pytest.mark.parametrize("parser_name", sorted(OUTPUTS))
def test_openai_tool_call_deltas(parser_name: str) -> None:
    text, content = OUTPUTS[parser_name]
    for seed in range(5):
        result = _run(parser_name, text, seed)
        ids = set()
        for r in result.values():
            assert r["content"].strip() == content
            assert r["finish"] == "tool_calls"
            calls = [r["calls"][i] for i in sorted(r["calls"])]
            assert [(c["name"], orjson.loads(c["arguments"])) for c in calls] == [("get_weather", WEATHER), ("book", BOOK)]
            ids |= {c["id"] for c in calls}
        assert len(ids) == 4, "every call of every choice has its own id"


@pytest.mark.parametrize("parser_name", sorted(OUTPUTS))
def test_parallel_tool_calls_false_keeps_the_first_call(parser_name: str) -> None:
    text, _ = OUTPUTS[parser_name]
    for r in _run(parser_name, text, seed=7, max_calls=1).values():
        assert [(c["name"], orjson.loads(c["arguments"])) for c in r["calls"].values()] == [("get_weather", WEATHER)]
        assert r["finish"] == "tool_calls"


@pytest.mark.parametrize("parser_name", sorted(OUTPUTS))
def test_reasoning_then_calls(parser_name: str) -> None:
    """A thinking model (GLM-Z1, Qwen3 with a coder fine-tune): reasoning first, then calls in
    the same format; a call-like text inside the reasoning is reasoning, not a call."""
    text, content = OUTPUTS[parser_name]
    think = f"<think>Maybe {text[:40]}… no, think first.</think>\n"
    for r in _run(parser_name, text, seed=3, think=think).values():
        assert r["reasoning"].startswith("Maybe ") and r["reasoning"].endswith("no, think first.")
        assert [c["name"] for c in r["calls"].values()] == ["get_weather", "book"]
        assert r["content"].strip() == content


def test_plain_answers_stay_content() -> None:
    """Without a call each format passes the answer through, whole, with finish_reason stop."""
    answers = {
        "glm4_9b": "\nParis is sunny today.\n{ braces } are fine.",
        "chatglm3": "\n 巴黎今天晴。",
        "qwen3_coder": "Use <function> tags in XML, e.g. <tool_call> is text here.",
        "json": 'Here is a config:\n```json\n{"name": "app", "port": 8080}\n```\nand {"a": 1} inline.',
    }
    for name, text in answers.items():
        for r in _run(name, text, seed=1).values():
            assert r["content"] == text.lstrip() and not r["calls"] and r["finish"] == "stop", name
