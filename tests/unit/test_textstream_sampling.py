from __future__ import annotations

import random

import numpy as np

from gpt_server.backends.textgen.sampling import SamplerState, sample_token
from gpt_server.backends.textgen.textstream import TextStream
from gpt_server.protocol.worker import SamplingParams


def _run(pieces: list[bytes], stop: list[str]) -> tuple[str, bool]:
    ts = TextStream(stop)
    out = []
    for p in pieces:
        out.append(ts.push(p))
        if ts.stopped:
            break
    else:
        out.append(ts.flush())
    return "".join(out), ts.stopped


def test_stop_string_invariant_under_chunking() -> None:
    text = "Hello wörld, the END is near. Ünïcode 🌊 done".encode()
    rng = random.Random(0)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, 12)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert _run(pieces, ["END"]) == ("Hello wörld, the ", True)
        assert _run(pieces, ["🌊"]) == ("Hello wörld, the END is near. Ünïcode ", True)
        assert _run(pieces, []) == (text.decode(), False)
        assert _run(pieces, ["ENDX"]) == (text.decode(), False)


def _state(**kw) -> SamplerState:  # noqa: ANN003
    return SamplerState(params=SamplingParams(**kw), rng=np.random.default_rng(kw.get("seed")), n_vocab=10)


def test_sampling_greedy_topk_topp_minp() -> None:
    logits = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], dtype=np.float32)
    assert sample_token(logits.copy(), _state(temperature=0)) == 9
    for seed in range(50):
        assert sample_token(logits.copy(), _state(temperature=1.0, top_k=2, seed=seed)) in (8, 9)
        assert sample_token(logits.copy(), _state(temperature=1.0, top_p=0.5, seed=seed)) == 9  # p(9) ≈ 0.63
        assert sample_token(logits.copy(), _state(temperature=1.0, min_p=0.3, seed=seed)) in (8, 9)
    a = [sample_token(logits.copy(), _state(temperature=1.5, seed=5)) for _ in range(5)]
    b = [sample_token(logits.copy(), _state(temperature=1.5, seed=5)) for _ in range(5)]
    assert a == b


def test_penalties_and_bias() -> None:
    logits = np.array([0, 0, 0, 0, 0, 0, 0, 0, 5, 5.1], dtype=np.float32)
    st = _state(temperature=0, logit_bias={2: 100.0})
    assert sample_token(st.process(logits.copy()), st) == 2
    st = _state(temperature=0, presence_penalty=2.0)
    st.accept(9)
    assert sample_token(st.process(logits.copy()), st) == 8
    st = SamplerState(params=SamplingParams(temperature=0, repetition_penalty=1.5), rng=np.random.default_rng(0), n_vocab=10, prompt=[9])
    assert sample_token(st.process(logits.copy()), st) == 8
