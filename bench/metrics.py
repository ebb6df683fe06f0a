"""Per-request samples and the summary of one round (latency percentiles, rates, goodput)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Sample", "SLO", "percentile", "summarise"]


@dataclass
class Sample:
    """One request as the client saw it. Times are seconds from the request start."""

    ok: bool
    e2e: float
    ttft: float | None = None  # first content token (streaming only)
    tokens: int = 0  # output tokens (usage when reported, else content events)
    itl: list[float] = field(default_factory=list)  # gaps between content events
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SLO:
    """What a "good" request is for goodput: every bound that is set must hold."""

    ttft_ms: float | None = 2000.0
    tpot_ms: float | None = 200.0
    e2e_ms: float | None = None

    def good(self, s: Sample) -> bool:
        if not s.ok:
            return False
        if self.ttft_ms is not None and s.ttft is not None and s.ttft * 1e3 > self.ttft_ms:
            return False
        tpot = s.tpot
        if self.tpot_ms is not None and tpot is not None and tpot * 1e3 > self.tpot_ms:
            return False
        return not (self.e2e_ms is not None and s.e2e * 1e3 > self.e2e_ms)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def _dist_ms(values: list[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        p = percentile(values, q)
        out[name] = None if p is None else round(p * 1e3, 3)
    out["mean"] = round(sum(values) / len(values) * 1e3, 3) if values else None
    return out


def summarise(samples: list[Sample], wall: float, slo: SLO | None = None, client_cpu: float | None = None) -> dict[str, Any]:
    """The figures of one round: ``wall`` is the round's duration in seconds."""
    slo = slo or SLO()
    ok = [s for s in samples if s.ok]
    tokens = sum(s.tokens for s in ok)
    wall = max(wall, 1e-9)
    itl = [g for s in ok for g in s.itl]
    out: dict[str, Any] = {
        "requests": len(samples),
        "ok": len(ok),
        "errors": len(samples) - len(ok),
        "first_error": next((s.error for s in samples if not s.ok), None),
        "wall_s": round(wall, 4),
        "requests_per_s": round(len(ok) / wall, 3),
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / wall, 3),
        "goodput_req_per_s": round(sum(1 for s in ok if slo.good(s)) / wall, 3),
        "mean_tokens_per_request": round(tokens / len(ok), 2) if ok else 0,
        "e2e_ms": _dist_ms([s.e2e for s in ok]),
        "ttft_ms": _dist_ms([s.ttft for s in ok if s.ttft is not None]),
        "tpot_ms": _dist_ms([t for s in ok if (t := s.tpot) is not None]),
        "itl_ms": _dist_ms(itl),
    }
    if client_cpu is not None:
        out["client_cpu_s"] = round(client_cpu, 4)
        out["client_cpu_share"] = round(client_cpu / wall, 3)
    return out
