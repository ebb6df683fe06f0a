"""``DraftGate``: how many drafts a llama.cpp decode step verifies, from measured step costs by
shape and each sequence's acceptance rate (gpt_server/backends/llama_cpp/speculative.py)."""

from __future__ import annotations

import pytest

from gpt_server.backends.llama_cpp.speculative import DraftGate, NgramIndex


def _gate(costs: dict[tuple[int, int], dict[int, float]]) -> DraftGate:
    g = DraftGate()
    for (seqs, drafting), row in costs.items():
        for longest, seconds in row.items():
            g.record(seqs, drafting, longest, 1.0)  # a shape's first step is not kept
            g.record(seqs, drafting, longest, seconds)
    g._offers = 1  # clear of the exploring turns
    return g


def test_weight_bound_steps_verify_every_draft() -> None:
    # a row more costs little (a GPU, a large model): a 0.7 acceptance pays for all five drafts
    g = _gate({(1, 0): {0: 0.023}, (1, 1): {1: 0.024, 5: 0.028}})
    assert g.choose(1, [(0.7, 5)]) == (5, 1)


def test_arithmetic_bound_steps_verify_none() -> None:
    # every row costs nearly a whole step: no acceptance short of certainty pays
    g = _gate({(1, 0): {0: 0.010}, (1, 1): {1: 0.019, 5: 0.045}})
    assert g.choose(1, [(0.7, 5)]) == (0, 0)
    assert g.choose(1, [(1.0, 5)]) == (5, 1)  # a sure copy still does: 6 tokens for 45 ms


def test_between_the_two_a_shorter_run_wins() -> None:
    # drafts cheap at first, dear later: the best length is inside the offer
    g = _gate({(1, 0): {0: 0.010}, (1, 1): {1: 0.0105, 2: 0.011, 3: 0.02, 5: 0.04}})
    assert g.choose(1, [(0.8, 5)]) == (2, 1)


def test_a_shape_not_measured_gets_a_short_run_first() -> None:
    g = DraftGate()
    assert g.choose(2, [(0.5, 4), (0.5, 2)]) == (0, 0)  # nothing to weigh drafts against: plain steps first
    g.record(2, 0, 0, 0.02)
    assert g.choose(2, [(0.5, 4), (0.5, 2)]) == (0, 0)  # a first step is not a measure
    g.record(2, 0, 0, 0.02)
    assert g.choose(2, [(0.5, 4), (0.5, 2)]) == (2, 2)  # two drafting sequences never measured
    assert g.choose(2, [(0.5, 1), (0.5, 1)]) == (1, 2)  # never more than offered
    g.record(2, 2, 2, 0.06)
    g.record(2, 2, 2, 0.06)
    assert g.choose(2, [(0.5, 4), (0.5, 2)]) == (0, 0)  # now it is: three times the cost for 1-1.5 tokens


def test_longer_runs_follow_where_rows_prove_cheap() -> None:
    """Measured at two drafts only: where those rows were nearly free (weight-bound) the gate
    goes on to longer runs; where each cost most of a step it does not try longer ones blindly."""
    g = _gate({(1, 0): {0: 0.020}, (1, 1): {2: 0.021}})
    assert g.choose(1, [(0.9, 8)]) == (8, 1)
    g = _gate({(1, 0): {0: 0.010}, (1, 1): {2: 0.016}})
    longest, _ = g.choose(1, [(0.9, 8)])
    assert 2 <= longest < 8


def test_shapes_are_kept_apart() -> None:
    """One sequence of four drafting costs an extra pass over the weights (llama.cpp splits the
    batch by tokens per sequence): its cost must not be taken for four drafting together."""
    g = _gate({(4, 0): {0: 0.034}, (4, 1): {1: 0.057}, (4, 4): {1: 0.043}})
    assert g.estimate(4, 1, 1) == pytest.approx(0.057)
    assert g.estimate(4, 4, 1) == pytest.approx(0.043)
    assert g.estimate(4, 2, 1) is None
    assert g.choose(4, [(0.8, 1)] * 4) == (1, 4)  # 4 + 3.2 tokens for 43 ms beats 4 for 34
    assert g.choose(4, [(0.8, 1)]) == (0, 0)  # 4 + 0.8 tokens for 57 ms does not


def test_estimates_interpolate_and_extrapolate_along_the_longest_measured() -> None:
    g = _gate({(1, 0): {0: 0.010}, (1, 1): {2: 0.020, 6: 0.040}})
    assert g.estimate(1, 1, 1) == pytest.approx(0.015)
    assert g.estimate(1, 1, 4) == pytest.approx(0.030)
    assert g.estimate(1, 1, 8) == pytest.approx(0.050)  # past the longest measured: its line
    # one length measured: the line from the step without drafts; a dip in it is no saving
    assert _gate({(1, 0): {0: 0.010}, (1, 1): {2: 0.014}}).estimate(1, 1, 6) == pytest.approx(0.022)
    assert _gate({(1, 0): {0: 0.010}, (1, 1): {2: 0.009}}).estimate(1, 1, 6) == pytest.approx(0.009)
    g.record(1, 1, 2, 0.030)  # a median of the recent steps, not the last figure
    assert g.estimate(1, 1, 2) == pytest.approx(0.025)
    g.record(1, 1, 2, 0.500)  # one preempted step does not move it far
    assert g.estimate(1, 1, 2) == pytest.approx(0.030)


def test_rates_start_at_the_engine_wide_rate_and_follow_recent_runs() -> None:
    g = DraftGate()
    assert g.rate(0.0, 0.0) == pytest.approx(0.5)
    seq = (0.0, 0.0)
    for _ in range(6):
        seq = g.observe(seq, 5, 5)  # copying: every draft kept
    high = g.rate(*seq)
    assert high > 0.85
    assert g.rate(0.0, 0.0) > 0.8  # the engine-wide rate moved too
    for _ in range(5):
        seq = g.observe(seq, 0, 5)  # then its own words
    assert g.rate(*seq) < 0.75


def test_it_explores_one_draft_more_now_and_then() -> None:
    g = _gate({(1, 0): {0: 0.010}, (1, 1): {1: 0.018, 5: 0.052}})
    picks = [g.choose(1, [(0.7, 5)])[0] for _ in range(4 * DraftGate.EXPLORE_EVERY)]
    assert picks.count(0) >= 3 * DraftGate.EXPLORE_EVERY
    assert 1 in picks  # within reach of the best: tried every EXPLORE_EVERY choices


def test_spare_sequences_carry_filler_where_equal_rows_are_cheaper() -> None:
    """One of four sequences has drafts. Alone it makes the step two passes (60 ms); with filler
    on the other three the step is one pass of 4 x 3 rows, nearly free where a step is bound by
    reading the weights (38 ms): the gate takes the four."""
    g = _gate({(4, 0): {0: 0.034}, (4, 1): {1: 0.057, 2: 0.060}, (4, 4): {1: 0.036, 2: 0.038}})
    assert g.choose(4, [(0.95, 2)], spare=3) == (2, 4)  # (4 + 1.85) / 38 ms beats 1.25 x 4 / 34 ms
    assert g.choose(4, [(0.95, 2)]) == (0, 0)  # without the spare ones it does not pay
    # where a row costs nearly a step (arithmetic-bound), filler on every sequence is dear
    g = _gate({(4, 0): {0: 0.034}, (4, 1): {1: 0.040, 2: 0.045}, (4, 4): {1: 0.065, 2: 0.080}})
    assert g.choose(4, [(0.95, 2)], spare=3) == (0, 0)
    # an unmeasured shape is tried, the sequences' own one first
    g = _gate({(4, 0): {0: 0.034}, (4, 1): {1: 0.040}})
    assert g.choose(4, [(0.9, 3)], spare=3) == (2, 4)


def test_filler_continues_the_draft_from_the_history() -> None:
    idx = NgramIndex(2, 3)
    idx.extend([1, 2, 3, 4, 5, 9, 1, 2])
    assert idx.propose(4) == [3, 4, 5, 9]  # (1, 2) was followed by 3 4 5 9
    assert idx.fill([3, 4], 5) == [3, 4, 5, 9, 1]  # own drafts first, then what followed (3, 4)
    assert idx.fill([], 3) == [3, 4, 5]
    idx = NgramIndex(2, 3)
    idx.extend([7, 8, 6])  # 6 never seen before: a single token looked up, then the last repeated
    assert idx.fill([], 2) == [6, 6]
    idx.extend([7])
    assert idx.fill([], 3) == [8, 6, 7]  # 7 was followed by 8 (one-token lookup), chained on
    assert len(idx.fill([1, 2, 3, 4], 2)) == 2  # never longer than asked


def test_drafts_that_would_not_pay_if_free_are_not_tried() -> None:
    """Nothing measured, but one draft at a 0.2 rate on four sequences is 4.2 tokens at best, under
    the margin: no step is spent measuring it."""
    g = _gate({(4, 0): {0: 0.034}, (1, 0): {0: 0.023}})
    assert g.choose(4, [(0.2, 1)]) == (0, 0)
    assert g.choose(4, [(0.9, 12)]) == (2, 1)  # a likely copy is tried (a short run first)


def test_going_back_to_plain_steps_is_charged_to_drafting() -> None:
    """A plain step right after a drafting one costs more (llama.cpp rebuilds its graph): that
    excess is learnt apart, not averaged into the plain cost, and added to every drafting step."""
    g = _gate({(4, 0): {0: 0.034}, (4, 4): {1: 0.043}})
    assert g.choose(4, [(0.6, 1)] * 4) == (1, 4)  # 6.4 tokens for 43 ms beats 1.1 x 4 for 34
    for _ in range(30):
        g.record(4, 4, 1, 0.043)
        g.record(4, 0, 0, 0.044)  # the plain step after it: 10 ms more
    assert g.estimate(4, 0, 0) == pytest.approx(0.034)
    assert g.back[4] == pytest.approx(0.010, rel=0.01)
    assert g.choose(4, [(0.6, 1)] * 4) == (0, 0)  # 6.4 tokens for 53 ms does not
    g.record(4, 4, 1, 0.043)
    g.skip()  # a step not recorded (a prompt chunk in it) came between
    g.record(4, 0, 0, 0.040)  # so this is a plain sample again, not a return from drafting
    assert g.estimate(4, 0, 0) == pytest.approx(0.037)  # the median of 0.034 and 0.040
    assert g.back[4] == pytest.approx(0.010, rel=0.01)


def test_drafting_is_tried_now_and_then_even_when_rates_are_low() -> None:
    """Rates move only when drafts are verified: were low-rate offers never tried, a run of free
    text would switch drafting off for good, and a later copy would never be drafted."""
    g = _gate({(1, 0): {0: 0.010}, (1, 1): {1: 0.011}})
    picks = [g.choose(1, [(0.1, 6)]) for _ in range(8 * DraftGate.EXPLORE_EVERY)]
    assert picks.count((0, 0)) == len(picks) - 1 and (1, 1) in picks


def test_steps_given_drafts_are_counted_by_why() -> None:
    g = _gate({(1, 0): {0: 0.023}})
    g.choose(1, [(0.9, 5)])  # not measured with drafts: tried
    assert g.choices == {"tried": 1, "chosen": 0, "explored": 0}
    g = _gate({(1, 0): {0: 0.023}, (1, 1): {1: 0.024, 5: 0.028}})
    g.choose(1, [(0.7, 5)])  # measured and paying: chosen
    g.choose(1, [(0.1, 5)])  # would not pay were it free: no drafts, not counted
    assert g.choices == {"tried": 0, "chosen": 1, "explored": 0}
    g = _gate({(1, 0): {0: 0.010}, (1, 1): {1: 0.018, 5: 0.052}})
    for _ in range(4 * DraftGate.EXPLORE_EVERY):
        g.choose(1, [(0.7, 5)])
    assert g.choices["explored"] >= 1 and g.choices["chosen"] == 0


def test_a_shape_not_measured_is_tried_only_where_it_could_pay() -> None:
    """Where one of four sequences drafts, llama.cpp makes the step two passes (the plain step and
    one over the drafting sequence's rows); where all four do, one pass of twice the rows, which
    costs about what a plain step of eight sequences does. A shape that could not beat the margin
    at that least cost is not spent measuring (free chat: rates near one half)."""
    g = _gate({(4, 0): {0: 0.034}, (1, 0): {0: 0.023}})
    assert g.choose(4, [(0.6, 12)]) == (0, 0)  # 5.5 tokens for >= 57 ms against 1.25 x 4 for 34
    assert g.choose(4, [(0.95, 12)]) == (2, 1)  # 12.2 tokens for >= 57 ms could: tried
    # 8 rows: along the plain steps of 1 and 4 sequences, >= 49 ms; 5.5 tokens do not pay
    assert g.choose(4, [(0.6, 12)], spare=3) == (0, 0)
    assert g.choose(4, [(0.7, 12)] * 4) == (2, 4)  # four sequences' 9.2 tokens could
    g = _gate({(4, 0): {0: 0.034}})
    assert g.choose(4, [(0.6, 12)], spare=3) == (2, 4)  # nothing past 4 measured: >= 34 ms


def test_a_step_of_sequences_never_measured_plain_is_weighed_along_the_others() -> None:
    """Three sequences decode only between four and two (a request ends, the next starts): their
    plain step is read off the line of the measured ones, so a shape of three, once measured with
    drafts, is judged, not tried again and again."""
    g = _gate({(2, 0): {0: 0.026}, (4, 0): {0: 0.034}})
    assert g.estimate(3, 0, 0) == pytest.approx(0.030)
    assert g.choose(3, [(0.9, 12)] * 3) == (2, 3)
    g.record(3, 3, 2, 0.045)
    g.record(3, 3, 2, 0.045)
    assert g.estimate(3, 3, 1) == pytest.approx(0.0375)
    assert g.choose(3, [(0.9, 12)] * 3)[0] > 2  # 3 x 1.71 tokens more for 15 ms more: chosen, longer
    assert g.choices["tried"] == 1
