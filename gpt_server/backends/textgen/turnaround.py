"""How long an engine waits, after a sequence finished, for the request that takes its place.

A client that sends its next request as soon as an answer ends (an agent's tool loop, a script
working through a list, a chat UI's next turn) is back in a few milliseconds: the answer's last
event reaches it and its next request travels through the gateway and the worker. If the engine
starts its next step at once, over the sequences still running, the newcomer arrives during that
step and waits for its end before its prompt goes in; on a CPU the request's own handling also
takes cores from the step in progress and stretches it. Waiting briefly instead puts the newcomer
into the very next step beside the others (its first token about a step sooner), and its handling
runs while the compute threads idle.

The wait is learnt, not assumed: ``Turnaround`` keeps the gaps between a finish and the next
arrival and waits only while three quarters of the recent gaps were under three quarters of a
step (the newcomer would otherwise lose less by waiting for the next step than the others lose
idling), for a little longer than they were, at most a step from the finish. A finish that no
request follows within ``HORIZON`` counts as a gap that never ended, so traffic that does not
come back at once (independent users, a client that stopped) soon stops the waits.
The engine waits only where one stream runs beside the finish (``engine_thread``), or none.

Several sequences that end in one step (clients in lockstep) are followed by as many requests a
few milliseconds apart. Where three or more did, the first one to arrive waits for the others
(``hold(gathering=True)``), so that their prompts go in together instead of the first one's alone
while the others wait for that step (c=4: the first token 42.8 -> 32.8 ms p50 in a session script,
bench/README). A pair is left to part: the wait beside one running stream then serves each of the
two (a pair gathered in lockstep ran 10 % fewer requests a second in one session-script run).

Requests sent at once to an idle engine (a harness fanning out a batch, an agent's parallel calls,
users starting together) arrive a millisecond or two apart, no finish announcing them. The first
would go in alone and the rest wait for its step. ``burst`` learns, per request that arrived at
an idle engine with no finish open, how soon the next one followed; while all but a quarter of
those followed within ``_SHARE`` of a step, the engine waits after such an arrival as long as
the others keep coming (each extends the wait by the longest recent spacing of a burst's
arrivals, twice over plus a millisecond), at most a step from the first, or until as many have
come as a recent burst usually brought (the median of the last eight). It learns from four such
arrivals first. A client alone is followed by nobody that soon, so where every client is alone
nobody is waited for; where most requests come in bursts, a lone one waits as a burst's first
would. Requests that come within ``HORIZON`` of a finish no arrival has followed count as
following it (``hold``), not as a burst.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["Turnaround", "HORIZON"]

# a finish not followed by a request this soon is a client that did not come back
HORIZON = 1.0
# gaps remembered; the wait needs half as many before it starts
_WINDOW = 8
# a wait begins while this quantile of the recent gaps is under _SHARE of a step; it lasts that
# gap times _SLACK plus _MARGIN seconds (a step at most)
_QUANTILE = 0.75
_SHARE = 0.75
_SLACK = 1.25
_MARGIN = 0.0005
# gathering the rest of a group: the longest recent gap times _GATHER_SLACK plus _GATHER_MARGIN
# (a step at most); the gaps of a group's last arrivals spread more (5-13 ms at c=4 on 2 vCPUs),
# and one that misses the wait costs itself a step and leaves the group split
_GATHER_SLACK = 2.0
_GATHER_MARGIN = 0.001
# and only while at least this many of the group are still to come (a group of three or more)
_GATHER_MIN_AWAITED = 2


class Turnaround:
    """Finishes and arrivals on one engine (all calls under the engine's lock)."""

    def __init__(self) -> None:
        self._open: deque[float] = deque()  # finishes not yet followed by an arrival, oldest first
        self._gaps: deque[float] = deque(maxlen=_WINDOW)
        self.holds = 0  # waits begun; of them, those after which requests were waiting
        self.joined = 0
        self.gathered = 0  # waits begun with a request already waiting (for the rest of a group)
        # arrivals at an idle engine: how soon the next arrival followed each
        self._followed: deque[float] = deque(maxlen=_WINDOW)
        self._cold: float | None = None  # such an arrival the next one has not followed yet
        # the spacing of consecutive arrivals in such bursts (each within _SHARE of a step of the last)
        self._spacing: deque[float] = deque(maxlen=2 * _WINDOW)
        self._prev: float | None = None  # the latest arrival of the burst being measured
        self._size = 0  # its arrivals so far
        self._sizes: deque[int] = deque(maxlen=_WINDOW)  # recent bursts' arrivals
        self._burst: float | None = None  # the one that began the burst the engine may wait for
        self._last = 0.0  # the latest arrival
        self.bursts = 0  # waits begun after an arrival at an idle engine, for the rest of its burst

    def finished(self, now: float) -> None:
        self._open.append(now)

    def arrived(self, now: float, idle: bool = False, step: float = 0.0) -> None:
        """A request came; ``idle``: nothing was running or waiting on the engine; ``step``: what
        a step takes (as ``hold``'s), for the spacing of a burst."""
        self._expire(now)
        if self._cold is not None:
            self._followed.append(now - self._cold)
            self._cold = None
        if self._prev is not None:
            if not self._open and now - self._prev <= step * _SHARE:
                self._spacing.append(now - self._prev)
                self._prev = now
                self._size += 1
            else:
                self._prev = None
        self._last = now
        if self._open:
            self._gaps.append(now - self._open.popleft())
        elif idle:
            if self._size:
                self._sizes.append(self._size)
            self._cold = self._burst = self._prev = now
            self._size = 1

    def _expire(self, now: float) -> None:
        while self._open and now - self._open[0] > HORIZON:
            self._open.popleft()
            self._gaps.append(math.inf)

    def awaited(self) -> int:
        """Finishes no arrival has followed yet (within ``HORIZON`` of the last ``hold``)."""
        return len(self._open)

    def expected(self) -> float | None:
        """The recent gap (seconds) all but a quarter of finishes were followed within, or None
        while too few gaps are known."""
        return _quantile(self._gaps)

    def hold(self, now: float, step: float, gathering: bool = False) -> float:
        """Seconds to wait from ``now`` for a request before the next step, whose like takes
        ``step`` seconds: 0 unless a sequence finished that no arrival has followed yet and the
        recent gaps were all but a quarter under ``_SHARE`` of a step; then a little longer than
        they were, at most a step from the finish. ``gathering``: a request of the group is
        already waiting, and the wait is for the rest, where ``_GATHER_MIN_AWAITED`` of it are
        still to come; it is sized by the longest recent gap under ``_SHARE`` of a step (the last
        of a group comes back last, and each one that misses the wait loses a whole step)."""
        self._expire(now)
        if not self._open or step <= 0:
            return 0.0
        gap = self.expected()
        if gap is None or gap > step * _SHARE:
            return 0.0
        if gathering:
            if len(self._open) < _GATHER_MIN_AWAITED:
                return 0.0
            gap = max(g for g in self._gaps if g <= step * _SHARE)
            return max(0.0, self._open[-1] + min(gap * _GATHER_SLACK + _GATHER_MARGIN, step) - now)
        return max(0.0, self._open[-1] + min(gap * _SLACK + _MARGIN, step) - now)

    def burst(self, now: float, step: float) -> float:
        """Seconds to wait from ``now``, on an idle engine whose waiting requests began with one
        that came to it idle, for the rest of their burst: 0 unless all but a quarter of recent
        such arrivals were followed within ``_SHARE`` of a step; then until the longest recent
        spacing of a burst's arrivals (under ``_SHARE`` of a step), twice over plus
        ``_GATHER_MARGIN``, has passed since the latest arrival, at most a step from the first,
        or as many requests as the median recent burst brought are in. Call ``burst_over`` when
        the requests go in."""
        gap = _quantile(self._followed)
        if self._burst is None or self._open or step <= 0 or gap is None or gap > step * _SHARE:
            return 0.0
        if self._sizes and self._size >= sorted(self._sizes)[(len(self._sizes) - 1) // 2]:
            return 0.0  # as many as a burst usually brings are in
        gap = max((g for g in self._spacing if g <= step * _SHARE), default=gap)
        return max(0.0, min(self._last + gap * _GATHER_SLACK + _GATHER_MARGIN, self._burst + step) - now)

    def burst_over(self) -> None:
        self._burst = None


def _quantile(gaps: deque[float]) -> float | None:
    """The gap all but a quarter of ``gaps`` were within, or None while fewer than half a window
    are known."""
    if len(gaps) < _WINDOW // 2:
        return None
    ordered = sorted(gaps)
    return ordered[math.ceil(_QUANTILE * len(ordered)) - 1]
