"""Dispatch policies, one lazy registry: choose a replica for a request."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["Candidate", "Policy", "POLICIES", "make_policy"]


class Candidate(Protocol):
    @property
    def worker_id(self) -> str: ...

    @property
    def capacity(self) -> int: ...

    @property
    def load(self) -> int: ...


class Policy(Protocol):
    def choose(self, model: str, candidates: Sequence[Candidate]) -> Candidate: ...


class Lottery:
    """Random, weighted by capacity (FastChat's lottery)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def choose(self, model: str, candidates: Sequence[Candidate]) -> Candidate:
        weights = [max(c.capacity, 1) for c in candidates]
        return self.rng.choices(list(candidates), weights=weights, k=1)[0]


class ShortestQueue:
    """Lowest load relative to capacity; ties broken at random."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def choose(self, model: str, candidates: Sequence[Candidate]) -> Candidate:
        best = min(c.load / max(c.capacity, 1) for c in candidates)
        tied = [c for c in candidates if c.load / max(c.capacity, 1) == best]
        return tied[0] if len(tied) == 1 else self.rng.choice(tied)


class LeastBusy:
    """Fewest requests in flight, whatever the capacity."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def choose(self, model: str, candidates: Sequence[Candidate]) -> Candidate:
        best = min(c.load for c in candidates)
        tied = [c for c in candidates if c.load == best]
        return self.rng.choice(tied)


class RoundRobin:
    """Each replica in turn, per model."""

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count[int]] = {}

    def choose(self, model: str, candidates: Sequence[Candidate]) -> Candidate:
        ordered = sorted(candidates, key=lambda c: c.worker_id)
        counter = self._counters.setdefault(model, itertools.count())
        return ordered[next(counter) % len(ordered)]


POLICIES: dict[str, Callable[[], Policy]] = {
    "lottery": Lottery,
    "shortest_queue": ShortestQueue,
    "least_busy": LeastBusy,
    "round_robin": RoundRobin,
}


def make_policy(name: str) -> Policy:
    try:
        policy: Policy = POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown dispatch_method '{name}' (known: {', '.join(POLICIES)})") from None
    return policy
