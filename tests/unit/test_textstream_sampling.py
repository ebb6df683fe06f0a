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


class _FixedRng:
    """An rng whose draws are given (``random()`` only, as ``_draw`` uses)."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_block_draw_is_the_inverse_cdf_over_the_whole_vocabulary() -> None:
    """``_draw`` finds by blocks the index one cumulative sum over all weights finds, for any
    draw; tokens of weight 0 (a whole block of them, the padding-free tail) are never chosen."""
    from gpt_server.backends.textgen.sampling import _draw

    gen = np.random.default_rng(7)
    for n in (10, 1000, 49152, 50257):  # one cumsum; blocks; blocks with a partial last block
        w = np.exp(gen.standard_normal(n).astype(np.float32) * 3)
        w[: min(n // 3, 300)] = 0.0  # the first block(s) weigh nothing
        w[-3:] = 0.0
        cum = np.cumsum(w, dtype=np.float64)
        draws = gen.random(400).tolist() + [0.0, 1.0 - 1e-16]
        for r in draws:
            want = min(int(np.searchsorted(cum, r * cum[-1], side="right")), n - 1)
            got = _draw(w, _FixedRng([r]))  # type: ignore[arg-type]
            assert w[got] > 0
            # equal, but where rounding moves a boundary: then a neighbour by cumulative weight
            assert got == want or abs(cum[got] - r * cum[-1]) <= 1e-6 * cum[-1], (n, r, got, want)


def test_sampled_frequencies_follow_the_distribution() -> None:
    """Temperature 1 over a 49k vocabulary with five likely tokens: the draws' frequencies
    are their softmax probabilities (within sampling error), and top-k/top-p/min-p keep to their sets."""
    n = 49152
    logits = np.full(n, -20.0, dtype=np.float32)
    hot = np.array([5, 300, 20000, 40000, 49151])
    logits[hot] = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05], dtype=np.float32))
    probs = np.exp(logits.astype(np.float64))
    probs /= probs.sum()
    st = SamplerState(params=SamplingParams(temperature=1.0), rng=np.random.default_rng(3), n_vocab=n)
    draws = np.array([sample_token(logits.copy(), st) for _ in range(4000)])
    for tok in hot:
        freq = float(np.mean(draws == tok))
        sd = np.sqrt(probs[tok] * (1 - probs[tok]) / len(draws))
        assert abs(freq - probs[tok]) < 5 * sd, (tok, freq, probs[tok])
    for kw, allowed in (({"top_k": 2}, {5, 300}), ({"top_p": 0.6}, {5, 300}), ({"min_p": 0.3}, {5, 300, 20000})):
        st = SamplerState(params=SamplingParams(temperature=1.0, **kw), rng=np.random.default_rng(4), n_vocab=n)
        got = {sample_token(logits.copy(), st) for _ in range(300)}
        assert got == allowed, (kw, got)


def test_penalties_touch_exactly_the_tokens_seen() -> None:
    """Presence/frequency penalties on the generated tokens' counts and the repetition penalty
    on prompt and generated tokens, as the whole-vocabulary formulas give them."""
    gen = np.random.default_rng(11)
    n = 3000
    prompt = gen.integers(0, n, 40).tolist()
    params = SamplingParams(temperature=1.0, presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.3)
    st = SamplerState(params=params, rng=np.random.default_rng(0), n_vocab=n, prompt=prompt)
    counts = np.zeros(n)
    seen = np.zeros(n, dtype=bool)
    seen[prompt] = True
    for _ in range(60):
        logits = gen.standard_normal(n).astype(np.float32) * 4
        want = logits.astype(np.float64)
        want[seen] = np.where(want[seen] > 0, want[seen] / 1.3, want[seen] * 1.3)
        want -= counts * 0.3 + (counts > 0) * 0.5
        got = st.process(logits.copy())
        assert np.allclose(got, want, atol=1e-4)
        tok = int(gen.integers(0, 200))  # repeats, so counts grow past 1
        st.accept(tok)
        counts[tok] += 1
        seen[tok] = True


def test_logits_with_no_distribution_give_the_most_likely_token() -> None:
    """+inf (a repetition penalty near 0 divides a positive logit by it), nan, all -inf, or a
    temperature whose inverse overflows: a token, never an exception (the engine thread samples)."""
    from gpt_server.backends.textgen.sampling import _draw

    n = 5000
    base = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    cases = []
    x = base.copy()
    x[1234] = np.inf
    cases.append((x, 1234))
    x = base.copy()
    x[77] = np.nan
    x[4000] = 50.0
    cases.append((x, 4000))
    cases.append((np.full(n, -np.inf, dtype=np.float32), None))
    for kw in ({"temperature": 1.0}, {"temperature": 0.9, "top_p": 0.5}, {"temperature": 1.0, "top_k": 10}, {"temperature": 1.0, "min_p": 0.1}):
        for logits, want in cases:
            st = SamplerState(params=SamplingParams(**kw), rng=np.random.default_rng(0), n_vocab=n)
            tok = sample_token(logits.copy(), st)
            assert 0 <= tok < n and (want is None or tok == want), (kw, tok, want)
    st = SamplerState(params=SamplingParams(temperature=1e-38), rng=np.random.default_rng(0), n_vocab=n)
    assert sample_token(base.copy(), st) == int(np.argmax(base))
    st = SamplerState(params=SamplingParams(temperature=1.0, repetition_penalty=1e-300), rng=np.random.default_rng(0), n_vocab=n,
                      prompt=[int(np.argmax(base))])
    with np.errstate(divide="ignore", over="ignore"):
        assert sample_token(st.process(base.copy()), st) == int(np.argmax(base))
    assert _draw(np.zeros(10, dtype=np.float32), _FixedRng([0.5])) == 0  # type: ignore[arg-type]


def test_sample_step_never_writes_into_the_logits_it_is_given() -> None:
    """Engines pass a read-only view of their own logits buffer (llama.cpp's): every mode reads
    it, and those that change logits (bias, penalties) work on a copy, with the same tokens."""
    import types

    from gpt_server.backends.textgen.sequences import sample_step

    rng = np.random.default_rng(3)
    base = rng.normal(size=5000).astype(np.float32)
    modes = [
        {"temperature": 0.0},
        {"temperature": 1.0, "seed": 5},
        {"temperature": 0.7, "top_p": 0.9, "top_k": 50, "seed": 5},
        {"temperature": 0.0, "logit_bias": {7: 100.0}},
        {"temperature": 0.0, "presence_penalty": 2.0, "frequency_penalty": 1.0, "repetition_penalty": 1.3},
        {"temperature": 0.0, "logprobs": True, "top_logprobs": 3},
    ]
    rows = []
    for kw in modes:
        toks = []
        for writable in (False, True):
            s = types.SimpleNamespace(
                index=0, params=SamplingParams(**kw), max_tokens=100, sampler=None, text=TextStream([]), generated=[],
                pending_lp=[], done=False, constraint=None, sink=lambda ev: None,
            )
            s.sampler = SamplerState(params=s.params, rng=np.random.default_rng(kw.get("seed")), n_vocab=base.size, prompt=[1, 2, 3])
            got = []
            for _ in range(6):
                logits = base.copy()
                logits.flags.writeable = writable
                tok, _ = sample_step(s, logits, is_eos=lambda t: False, piece=lambda t: b"x", text_of=lambda t: ("x", [120]), context_full=False)
                assert np.array_equal(logits, base), kw  # unchanged
                got.append(tok)
            toks.append(got)
        assert toks[0] == toks[1], kw
        rows.append(toks[0])
    assert len(set(rows[0])) == 1 and rows[0][0] == int(np.argmax(base))  # greedy: the same token
    assert set(rows[3]) == {7}  # the bias
    assert len(set(rows[4])) == 6  # penalties: a token once chosen is pushed down


def test_text_is_the_incremental_decoders_for_any_bytes_and_chunking() -> None:
    """Whole characters are decoded without the incremental decoder; split characters, bytes that
    are not UTF-8 and a character cut at the end still come out as the decoder (errors=replace) gives them."""
    import codecs

    parts = ["héllo ".encode(), "🌊".encode(), b"\xff", "ü".encode()[:1], b" ok ", b"\xed\xa0\x80", "日本".encode(), b"\xe6\x97"]
    rng = random.Random(1)
    for _ in range(300):
        text = b"".join(rng.choice(parts) for _ in range(rng.randint(1, 10)))
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 8)))) if len(text) > 1 else []
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        want = "".join(dec.decode(p) for p in pieces) + dec.decode(b"", final=True)
        assert _run(pieces, []) == (want, False)
        assert _run(pieces, ["\x00never"]) == (want, False)


def test_greedy_short_path_picks_what_the_full_path_picks() -> None:
    """A plain greedy sequence skips the sampler's steps; its tokens are those the full path gives."""
    import types

    from gpt_server.backends.textgen.sequences import sample_step

    for kw in ({"temperature": 0.0}, {"temperature": 0.0, "logprobs": True}, {"temperature": 0.0, "logit_bias": {3: 1.0}}):
        toks = []
        for short in (True, False):
            s = types.SimpleNamespace(
                index=0, params=SamplingParams(**kw), max_tokens=100, sampler=None, text=TextStream([]), generated=[],
                pending_lp=[], done=False, constraint=None, sink=lambda ev: None,
            )
            s.sampler = SamplerState(params=s.params, rng=np.random.default_rng(0), n_vocab=64)
            assert s.sampler.plain_greedy == (kw == {"temperature": 0.0})
            s.sampler.plain_greedy = s.sampler.plain_greedy and short
            for i in range(20):
                logits = np.random.default_rng(i).normal(size=64).astype(np.float32)
                sample_step(s, logits, is_eos=lambda t: False, piece=lambda t: b"x", text_of=lambda t: ("x", [120]), context_full=False)
            toks.append(s.generated)
        assert toks[0] == toks[1], kw
