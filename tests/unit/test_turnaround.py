"""The wait after a finish for the request that follows it (``backends.textgen.turnaround``), and
the engine loop that waits (``EngineThread``), on a scripted engine whose steps take a fixed time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from gpt_server.backends.textgen.engine_thread import EngineThread
from gpt_server.backends.textgen.sequences import SeqEvent
from gpt_server.backends.textgen.turnaround import HORIZON, Turnaround
from gpt_server.protocol.worker import SamplingParams

STEP = 0.020


def _learnt(t: Turnaround, gap: float, n: int = 8, start: float = 100.0) -> float:
    """``n`` finishes each followed by an arrival ``gap`` later; the clock after them."""
    now = start
    for _ in range(n):
        t.finished(now)
        now += gap
        t.arrived(now)
        now += 0.05
    return now


def test_no_wait_before_enough_gaps_are_known() -> None:
    t = Turnaround()
    now = _learnt(t, 0.003, n=3)
    t.finished(now)
    assert t.expected() is None
    assert t.hold(now, STEP) == 0.0


def test_short_gaps_wait_a_little_longer_than_they_took() -> None:
    t = Turnaround()
    now = _learnt(t, 0.003)
    assert t.expected() == pytest.approx(0.003)
    t.finished(now)
    left = t.hold(now + 0.001, STEP)  # a millisecond after the finish
    assert left == pytest.approx(0.003 * 1.25 + 0.0005 - 0.001)
    assert t.hold(now + 0.001, 0.0) == 0.0  # nothing to weigh it against: no wait


def test_no_wait_without_a_finish_no_arrival_has_followed() -> None:
    t = Turnaround()
    now = _learnt(t, 0.003)
    assert t.hold(now, STEP) == 0.0
    t.finished(now)
    t.arrived(now + 0.002)
    assert t.hold(now + 0.002, STEP) == 0.0


def test_gaps_near_a_step_wait_not() -> None:
    t = Turnaround()
    now = _learnt(t, 0.8 * STEP)
    t.finished(now)
    assert t.hold(now, STEP) == 0.0


def test_a_wait_lasts_at_most_a_step_from_the_finish() -> None:
    t = Turnaround()
    step = 0.002
    now = _learnt(t, 0.7 * step)  # x 1.25, plus the margin, passes the step
    t.finished(now)
    assert t.hold(now, step) == pytest.approx(step)


def test_a_quarter_of_clients_that_never_came_back_is_tolerated_more_stop_the_waits() -> None:
    t = Turnaround()
    now = _learnt(t, 0.003, n=6)
    for _ in range(2):  # two finishes nobody follows
        t.finished(now)
        now += HORIZON + 0.1
        t.hold(now, STEP)  # expires them
    t.finished(now)
    assert t.hold(now, STEP) > 0  # 6 short gaps of 8
    t.arrived(now + 0.003)
    for _ in range(2):
        t.finished(now)
        now += HORIZON + 0.1
        t.hold(now, STEP)
    t.finished(now)
    assert t.hold(now, STEP) == 0.0  # 4 of 8 never ended


def test_gathering_a_group_waits_for_its_longest_recent_gap() -> None:
    """With a request of the group already waiting, the wait is sized by the longest recent gap
    (under three quarters of a step), doubled, plus a millisecond: a group's last arrivals spread."""
    t = Turnaround()
    now = 100.0
    for _ in range(2):  # two groups of four, back 3, 5, 6 and 8 ms after their finish
        for _ in range(4):
            t.finished(now)
        for gap in (0.003, 0.005, 0.006, 0.008):
            t.arrived(now + gap)
        now += 0.05
    for _ in range(4):
        t.finished(now)
    t.arrived(now + 0.003)
    assert t.expected() == pytest.approx(0.006)
    assert t.hold(now + 0.003, STEP) == pytest.approx(0.006 * 1.25 + 0.0005 - 0.003)
    assert t.hold(now + 0.003, STEP, gathering=True) == pytest.approx(0.008 * 2 + 0.001 - 0.003)
    assert t.hold(now + 0.003, 0.012, gathering=True) == pytest.approx(0.012 - 0.003)  # a step at most
    t.arrived(now + 0.004)
    t.arrived(now + 0.005)  # one of the group still to come: a pair is not gathered
    assert t.hold(now + 0.005, STEP, gathering=True) == 0.0
    assert t.hold(now + 0.005, STEP) > 0


def test_arrivals_match_finishes_in_order() -> None:
    t = Turnaround()
    t.finished(1.0)
    t.finished(1.010)
    t.arrived(1.012)  # the older finish's
    t.arrived(1.013)
    assert sorted(t._gaps) == [pytest.approx(0.003), pytest.approx(0.012)]


# ---- the loop ----------------------------------------------------------------------------------


@dataclass
class _Seq:
    index: int
    steps: int  # decode steps until it finishes
    sink: Callable[[SeqEvent], None]
    prompt: list[int] = field(default_factory=lambda: [1])
    params: SamplingParams = field(default_factory=SamplingParams)
    sampler: object = None
    text: object = None


class _Engine(EngineThread[_Seq, None]):
    """Every step takes STEP seconds and records which sequences it carried."""

    def __init__(self, hold: float | None) -> None:
        super().__init__(n_vocab=8, thread_name="test-engine", label="test")
        self.hold_cap = hold
        self.running: list[_Seq] = []
        self.batches: list[list[int]] = []
        self._start_thread()

    def _busy(self) -> bool:
        return bool(self.running)

    def _admit(self) -> None:
        while self._waiting:
            self.running.append(self._waiting.popleft())

    def _step(self, admitted: None) -> None:
        time.sleep(STEP)
        self.batches.append([s.index for s in self.running])
        for s in list(self.running):
            s.steps -= 1
            if s.steps == 0:
                self._finished()  # as the llama engine: noted before the sequence leaves and its client hears
                self.running.remove(s)
                s.sink(SeqEvent(index=s.index, finish_reason="stop"))

    def _fail_running(self, error: str) -> None:
        self.running.clear()

    def _running(self) -> int:
        return len(self.running)


def _closed_loop(
    engine: _Engine,
    users: int,
    rounds: int,
    think: float,
    spread: float = 0.0,
    steps: Callable[[int], int] = lambda u: 6 + u,
) -> list[float]:
    """``users`` clients, user ``u`` sending its next request ``think + u × spread`` seconds after
    its last one ended, each request ``steps(u)`` steps long; every request's wait from submit to
    its first step, in steps that ran in between."""
    waits: list[float] = []
    lock = threading.Lock()

    def user(u: int) -> None:
        for r in range(rounds):
            done = threading.Event()
            before = len(engine.batches)
            engine.submit([_Seq(index=u * 1000 + r, steps=steps(u), sink=lambda ev, d=done: d.set())])
            assert done.wait(10)
            first = next(i for i, b in enumerate(engine.batches[before:], before) if u * 1000 + r in b)
            with lock:
                waits.append(first - before)
            time.sleep(think + u * spread)

    threads = [threading.Thread(target=user, args=(u,)) for u in range(users)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    return [float(w) for w in waits]


def test_the_request_that_follows_a_finish_joins_the_next_step() -> None:
    """Two clients back in 3 ms: with the wait each new request goes into the step right after
    the finish (no step in between); without it, one step runs without it first.

    Their answers are 6 and 8 steps long. (At 6 and 7 the pair can lock into finishing in one
    step every round: the first one back goes in alone, the other a step later, and the longer
    one started first ends with the shorter again. A pair is not gathered, so one request in two
    then waits a step; CI's host fell into that.)"""
    held = _Engine(hold=-1)
    plain = _Engine(hold=None)
    try:
        w_held = _closed_loop(held, users=2, rounds=12, think=0.003, steps=lambda u: 6 + 2 * u)
        w_plain = _closed_loop(plain, users=2, rounds=12, think=0.003, steps=lambda u: 6 + 2 * u)
    finally:
        held._stop_thread(5)
        plain._stop_thread(5)
    # (a finish in the step where the other stream also ends leaves nothing running: no wait then)
    assert held.turnaround.holds >= 4 and held.turnaround.joined >= 0.8 * held.turnaround.holds
    assert plain.turnaround.holds == 0
    # steps that ran between a request's submit and its first step, after the first few (learning)
    assert np.mean(w_held[6:]) < 0.3 < np.mean(w_plain[6:]), (w_held, w_plain)


def test_a_lone_client_is_never_waited_for() -> None:
    """Nothing runs after a lone client's finish: the engine sleeps until it is back, no wait."""
    engine = _Engine(hold=-1)
    try:
        _closed_loop(engine, users=1, rounds=8, think=0.003)
    finally:
        engine._stop_thread(5)
    assert engine.turnaround.holds == 0


def test_no_wait_where_more_than_one_stream_runs_beside_the_finish() -> None:
    """Three clients: most finishes leave two streams running, and a wait would cost both; the
    engine waits only after those that leave one (two finishing in one step) or none (a group
    that finished together, for the rest of it)."""
    engine = _Engine(hold=-1)
    seen: list[int] = []  # the streams running at each wait begun
    hold = engine.turnaround.hold

    def recorded(now: float, step: float, gathering: bool = False) -> float:
        left = hold(now, step, gathering)
        if left > 0:
            seen.append(len(engine.running))
        return left

    engine.turnaround.hold = recorded  # type: ignore[method-assign]
    try:
        _closed_loop(engine, users=3, rounds=8, think=0.003)
        assert engine.healthy()
    finally:
        engine._stop_thread(5)
    assert all(n <= 1 for n in seen), seen


def test_a_group_that_finished_together_goes_in_together() -> None:
    """Three clients whose answers end in the same step, back 2, 4 and 6 ms later: with the wait
    the first one to arrive waits for the other two and the prompts share a step (none waits for
    another's step); without it the first one's step runs alone and the others wait for it. (The
    three may also settle as two in lockstep and one a step behind, which the wait cannot join:
    then one request in three waits a step.)"""
    held = _Engine(hold=-1)
    plain = _Engine(hold=None)
    try:
        w_held = _closed_loop(held, users=3, rounds=10, think=0.002, spread=0.002, steps=lambda u: 6)
        w_plain = _closed_loop(plain, users=3, rounds=10, think=0.002, spread=0.002, steps=lambda u: 6)
    finally:
        held._stop_thread(5)
        plain._stop_thread(5)
    assert held.turnaround.gathered >= 3, held.turnaround.gathered
    # after the first rounds (learning the gaps): steps that ran between a submit and its first step
    assert np.mean(w_held[12:]) < 0.4 < 0.6 < np.mean(w_plain[12:]), (w_held, w_plain)


def test_a_pair_that_finished_together_is_left_to_part() -> None:
    """Two clients in lockstep: the first one back is not held for the other (a pair parts, and
    then each finish is followed by a wait with one stream beside it)."""
    engine = _Engine(hold=-1)
    try:
        _closed_loop(engine, users=2, rounds=10, think=0.002, spread=0.002, steps=lambda u: 6)
        assert engine.healthy()
    finally:
        engine._stop_thread(5)
    assert engine.turnaround.gathered == 0 and engine.turnaround.holds >= 2, engine.turnaround.holds


# ---- requests sent at once to an idle engine -----------------------------------------------------


def _bursts(t: Turnaround, gaps: tuple[float, ...], n: int, start: float = 100.0, step: float = STEP) -> float:
    """``n`` bursts at an idle engine: a first arrival, then one ``gap`` after it for each gap;
    the clock after them."""
    now = start
    for _ in range(n):
        t.arrived(now, idle=True, step=step)
        for g in gaps:
            t.arrived(now + g, step=step)
        t.burst_over()
        now += 0.5
    return now


def test_a_burst_is_waited_for_while_it_keeps_coming() -> None:
    """Learnt from bursts of four, each 1 ms after the last (and one lone arrival: a quarter may
    be), the wait after a request at an idle engine lasts 1 ms twice over plus a millisecond from
    the latest arrival, at most a step from the first, and ends when four are in."""
    t = Turnaround()
    now = _bursts(t, (0.001, 0.002, 0.003), n=3)
    t.arrived(now, idle=True)
    assert t.burst(now, STEP) == 0.0  # three known: too few
    t.burst_over()
    now = _bursts(t, (0.001, 0.002, 0.003), n=1, start=now + 0.5)
    t.arrived(now, idle=True, step=STEP)
    assert t.burst(now, STEP) == pytest.approx(0.003)
    t.arrived(now + 0.001, step=STEP)
    assert t.burst(now + 0.001, STEP) == pytest.approx(0.003)  # the wait moves with each arrival
    assert t.burst(now + 0.001, 0.0035) == pytest.approx(0.0025)  # a step from the first at most
    assert t.burst(now + 0.005, STEP) == 0.0
    t.arrived(now + 0.002, step=STEP)
    assert t.burst(now + 0.002, STEP) > 0
    t.arrived(now + 0.003, step=STEP)  # four in, as each burst brought: no more to wait for
    assert t.burst(now + 0.003, STEP) == 0.0
    t.burst_over()
    assert t.burst(now + 0.001, STEP) == 0.0  # they went in: nothing to wait for


def test_a_burst_wait_is_sized_by_the_widest_spacing_of_its_arrivals() -> None:
    """Bursts whose second request came 1 ms after the first but the fourth 4 ms after the third:
    each arrival extends the wait by 4 ms twice over plus a millisecond. Spacings over
    three quarters of a step are no burst's: under a configured bound of 200 ms, 60 ms is one's."""
    t = Turnaround()
    now = _bursts(t, (0.001, 0.002, 0.006), n=4)
    t.arrived(now, idle=True)
    assert t.burst(now, STEP) == pytest.approx(0.009)
    t = Turnaround()
    now = _bursts(t, (0.06, 0.061, 0.062), n=4, step=0.2)
    t.arrived(now, idle=True, step=0.2)
    assert t.burst(now, 0.2) == pytest.approx(0.121)


def test_no_burst_wait_for_a_lone_client_or_beside_a_finish() -> None:
    t = Turnaround()
    now = 100.0
    for _ in range(8):  # each request at an idle engine, nobody following within a step
        t.arrived(now, idle=True)
        t.burst_over()
        now += 0.3
    t.arrived(now, idle=True)
    assert t.burst(now, STEP) == 0.0
    t = Turnaround()
    now = _bursts(t, (0.001,), n=8)
    t.finished(now)
    t.arrived(now + 0.001)  # it follows a finish, not a burst: that wait is ``hold``'s
    assert t.burst(now + 0.001, STEP) == 0.0
    t.finished(now + 0.002)
    t.arrived(now + 0.003, idle=True)  # idle, but a finish was open: it followed that
    assert t.burst(now + 0.003, STEP) == 0.0


def _waves(engine: _Engine, users: int, waves: int, spread: float, pause: float) -> list[int]:
    """``waves`` times, ``users`` requests of 6 steps sent ``spread`` apart to the idle engine,
    then ``pause`` after the last finished; how many of each wave's went into its first step."""
    firsts: list[int] = []
    for w in range(waves):
        before = len(engine.batches)
        done = [threading.Event() for _ in range(users)]
        for u in range(users):
            engine.submit([_Seq(index=w * 100 + u, steps=6, sink=lambda ev, d=done[u]: d.set())])
            time.sleep(spread)
        assert all(d.wait(10) for d in done)
        ids = {w * 100 + u for u in range(users)}
        firsts.append(len(ids & set(engine.batches[before])))
        time.sleep(pause)
    return firsts


def test_requests_sent_at_once_to_an_idle_engine_go_in_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three requests 2 ms apart, the previous wave's finishes long past (``HORIZON``, shortened
    here): with the wait, once four waves taught it, each wave's three go into one step; without,
    the first one's step runs alone."""
    monkeypatch.setattr("gpt_server.backends.textgen.turnaround.HORIZON", 0.1)
    held = _Engine(hold=-1)
    plain = _Engine(hold=None)
    try:
        f_held = _waves(held, users=3, waves=9, spread=0.002, pause=0.15)
        f_plain = _waves(plain, users=3, waves=9, spread=0.002, pause=0.15)
        assert held.healthy() and plain.healthy()
    finally:
        held._stop_thread(5)
        plain._stop_thread(5)
    assert held.turnaround.bursts >= 3 and plain.turnaround.bursts == 0
    # (a late wake-up of a loaded host's threads can split a held wave or join a plain one)
    assert f_held[5:].count(3) >= 3 and f_plain.count(3) <= 2, (f_held, f_plain)


def test_a_lone_client_after_a_pause_is_never_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gpt_server.backends.textgen.turnaround.HORIZON", 0.1)
    engine = _Engine(hold=-1)
    try:
        firsts = _waves(engine, users=1, waves=8, spread=0.0, pause=0.15)
    finally:
        engine._stop_thread(5)
    assert firsts == [1] * 8 and engine.turnaround.bursts == 0
