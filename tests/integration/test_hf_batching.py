"""The transformers engine's continuous batching, in process on the real SmolLM2 weights.

Requests that arrive while others are decoding are prefilled on their own and then join
the running batch: one forward per step for all rows of an adapter. Greedy answers must be
the same token for token as each request run alone, and rows leaving the batch must not
disturb the rest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gpt_server.protocol.worker import SamplingParams
from tests.helpers import fail_sampling

PROMPTS = [
    "The capital of France is",
    "Write a short list of three fruits, then explain why each one is healthy:",
    "Once upon a time, in a small village near the mountains, there lived a",
]


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    from gpt_server.backends.hf import HFOptions
    from gpt_server.backends.hf.engine import HFEngine
    from gpt_server.backends.hf.loading import load_model
    from tests.hf_helpers import smollm_hf_dir

    path = str(smollm_hf_dir())
    lm = load_model(path, HFOptions(model_name_or_path=path, dtype="float32"), [], 2)
    eng = HFEngine(lm.model, lm.tokens, max_active=8, n_ctx=lm.n_ctx, set_adapter=lm.set_adapter)
    eng.lm = lm
    yield eng
    eng.close()


def _seq(eng: Any, i: int, max_tokens: int) -> Any:
    from gpt_server.backends.hf.engine import Sequence

    done = threading.Event()

    def sink(ev: Any) -> None:
        if ev.finish_reason is not None or ev.error is not None:
            done.set()

    s = Sequence(
        index=i,
        prompt=eng.lm.encode(PROMPTS[i], add_special=True),
        params=SamplingParams(temperature=0.0, max_tokens=max_tokens),
        max_tokens=max_tokens,
        sink=sink,
        cancelled=threading.Event(),
    )
    s.finished = done  # type: ignore[attr-defined]
    return s


def _wait(seqs: list[Any], timeout: float = 120) -> None:
    for s in seqs:
        assert s.finished.wait(timeout), "a sequence did not finish"


def test_late_requests_join_the_running_batch_with_identical_greedy_output(engine: Any) -> None:
    lengths = [40, 12, 24]  # the middle one leaves the batch first
    solo = []
    for i, n in enumerate(lengths):
        s = _seq(engine, i, n)
        engine.submit([s])
        _wait([s])
        solo.append(list(s.generated))
        assert s.generated, "no tokens"

    first = _seq(engine, 0, lengths[0])
    engine.submit([first])
    deadline = time.monotonic() + 60
    while len(first.generated) < 6 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(first.generated) >= 6, "the first request never got going"
    late = [_seq(engine, 1, lengths[1]), _seq(engine, 2, lengths[2])]
    engine.submit(late)
    seen: set[tuple[int, int]] = set()
    while not all(s.finished.is_set() for s in [first, *late]):
        seen.add((engine.active, engine.cohorts))
        time.sleep(0.002)
    _wait([first, *late])
    assert [list(first.generated), list(late[0].generated), list(late[1].generated)] == solo
    # three rows decoding in one forward: the late requests joined the first one's batch
    assert (3, 1) in seen, f"(active rows, forwards per step) seen: {sorted(seen)}"
    assert engine.active == 0 and engine.cohorts == 0


def _run(eng: Any, prompt: list[int], max_tokens: int) -> Any:
    from gpt_server.backends.hf.engine import Sequence

    done = threading.Event()

    def sink(ev: Any) -> None:
        if ev.finish_reason is not None or ev.error is not None:
            done.set()

    s = Sequence(index=0, prompt=prompt, params=SamplingParams(temperature=0.0, max_tokens=max_tokens),
                 max_tokens=max_tokens, sink=sink, cancelled=threading.Event())
    eng.submit([s])
    assert done.wait(120), "the sequence did not finish"
    deadline = time.monotonic() + 10  # the row leaves its batch (and is stored) just after it finishes
    while eng.active and time.monotonic() < deadline:
        time.sleep(0.002)
    return s


def test_a_later_turn_prefills_only_what_the_prefix_store_lacks(engine: Any) -> None:
    """The next turn of a chat starts from the stored KV of the previous one: same greedy answer."""
    from gpt_server.backends.hf.engine import PrefixStore

    lm = engine.lm
    turn1 = lm.encode(PROMPTS[1], add_special=True)
    try:
        engine.prefixes = PrefixStore(0)  # off: the reference answers
        first = _run(engine, turn1, 16)
        turn2 = turn1 + list(first.generated) + lm.encode(" Now name two vegetables as well:", add_special=False)
        fresh = _run(engine, turn2, 16)
        assert fresh.cached == 0 and len(engine.prefixes) == 0

        engine.prefixes = PrefixStore(256 << 20)
        again = _run(engine, turn1, 16)
        assert again.generated == first.generated
        assert len(engine.prefixes) == 1
        reused = _run(engine, turn2, 16)
        # turn 1's prompt and its answer but the last token (never forwarded) came from the store
        assert reused.cached == len(turn1) + len(first.generated) - 1, (reused.cached, len(turn1), len(first.generated))
        assert reused.generated == fresh.generated
        # turn 2's entry supersedes turn 1's (a prefix of it)
        assert len(engine.prefixes) == 1 and engine.prefixes.hits == 1

        # a budget for one entry: the older goes
        engine.prefixes = PrefixStore(256 << 20)
        _run(engine, turn1, 4)
        one = engine.prefixes.used
        other = list(turn1)
        other[0] = turn1[1]  # same length, nothing in common
        engine.prefixes = PrefixStore(one * 3 // 2)
        _run(engine, turn1, 4)
        _run(engine, other, 4)
        assert len(engine.prefixes) == 1 and engine.prefixes.used <= engine.prefixes.budget
        assert engine.prefixes.find(None, turn1 + [1, 2]) is None
        assert engine.prefixes.find(None, other + [1, 2]) is not None
    finally:
        engine.prefixes = PrefixStore(0)


def test_a_sequence_whose_sampling_fails_ends_alone(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while one row is sampled ends that row with an error; the other row of its
    batch finishes as it would alone, and the engine serves the next request (it used to end
    every row of the batch)."""
    import gpt_server.backends.hf.engine as engine_mod

    solo = _seq(engine, 1, 24)
    engine.submit([solo])
    _wait([solo])
    bad, good = _seq(engine, 0, 24), _seq(engine, 1, 24)
    real = engine_mod.sample_step
    errors = fail_sampling(monkeypatch, engine_mod, bad)
    engine.submit([bad, good])
    _wait([bad, good])
    assert errors == ["sampling failed (FloatingPointError)"] and len(bad.generated) == 2
    assert list(good.generated) == list(solo.generated) and good.generated
    monkeypatch.setattr(engine_mod, "sample_step", real)
    again = _seq(engine, 1, 24)
    engine.submit([again])
    _wait([again])
    assert list(again.generated) == list(solo.generated)
