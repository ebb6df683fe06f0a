"""The benchmark report's target checks: a ratio at the target counts as met only where the run's
95% interval stays at or above it too."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.loadgen import RoundSpec, run_round
from bench.metrics import Sample
from bench.report import check_targets, markdown
from bench.run import Runner, build_parser


def _row(c: int, ratio: float, ci: list[float] | None, ttft: float = 0.0) -> dict[str, Any]:
    dist = {"p50": 10.0, "p90": 11.0, "p99": 12.0}
    side = {"output_tokens_per_s": 100.0, "requests_per_s": 1.5, "ttft_ms": dist, "tpot_ms": dist, "e2e_ms": dist,
            "goodput_req_per_s": 1.5, "errors": 0}
    row = {"mode": "stream", "concurrency": c, "ratio": ratio, "delta_ttft_p50_ms": ttft, "delta_e2e_p50_ms": 0.0,
           "rate_key": "output_tokens_per_s", "A": side, "B": side}
    if ci is not None:
        row["rounds"] = {"n": 30, "median": ratio, "q25": ci[0], "q75": ci[1], "ci95": ci}
    return row


def _checks(*rows: dict[str, Any]) -> dict[str, tuple[str, bool | None]]:
    res = {"pairs": {"llamaserver": {"rows": list(rows)}}}
    return {t: (v, ok) for t, v, ok in check_targets(res)}


def test_a_ratio_is_met_only_where_its_interval_clears_the_target() -> None:
    got = _checks(_row(1, 1.033, [1.017, 1.049]), _row(8, 1.01, [0.98, 1.04]), _row(4, 0.96, [0.94, 0.99]),
                  _row(16, 0.98, None))
    assert got["tok/s ≥ 1.0× llama-server (stream, c=1)"] == ("1.033× (95% CI 1.017–1.049)", True)
    assert got["tok/s ≥ 1.0× llama-server (stream, c=8)"] == ("1.010× (95% CI 0.980–1.040)", None)
    assert got["tok/s ≥ 0.97× llama-server (stream, c=4)"][1] is False
    assert got["tok/s ≥ 0.97× llama-server (stream, c=16)"] == ("0.980×", True)  # no rounds: the ratio alone


def test_the_report_says_what_a_dash_means() -> None:
    res = {"meta": {"started": "t", "cpu_count": 2, "platform": "p", "python": "3", "loadavg_start": [0.0],
                    "args": {"slo_ttft_ms": 1.0, "slo_tpot_ms": 1.0}},
           "pairs": {"llamaserver": {"rows": [_row(1, 1.01, [0.99, 1.03])]}}}
    text = markdown(res)
    assert "| tok/s ≥ 1.0× llama-server (stream, c=1) | 1.010× (95% CI 0.990–1.030) | – |" in text
    assert "not shown" in text


def test_rounds_go_on_through_the_prompt_set() -> None:
    """Round r of both sides sends the same requests, starting where round r-1 ended: rounds of two
    requests still reach every prompt (they all began at the first before)."""
    seen: list[int] = []

    async def target(i: int, spec: RoundSpec) -> Sample:
        seen.append(i)
        return Sample(ok=True, e2e=0.01, tokens=1)

    asyncio.run(run_round(target, RoundSpec(concurrency=1, requests=2, first=6)))
    assert seen == [6, 7]

    class Side:
        def __init__(self) -> None:
            self.firsts: list[int] = []

        def round(self, spec: dict[str, Any]) -> dict[str, Any]:
            self.firsts.append(spec.get("first", 0))
            samples = [Sample(ok=True, e2e=0.5, ttft=0.01, tokens=64).to_dict() for _ in range(spec["requests"])]
            return {"samples": samples, "wall": 0.5 * spec["requests"], "cpu": 0.1}

    args = build_parser().parse_args(["--rounds", "4", "--min-requests", "2", "--requests-per-user", "2"])
    a, b = Side(), Side()
    runner = Runner(args, Path("."))
    rows = runner.pair(a, b, [1], ["stream"], runner.chat_spec, "output_tokens_per_s")  # type: ignore[arg-type]
    assert a.firsts == b.firsts == [0, 0, 2, 4, 6]  # the warm-up round, then rounds 0..3
    assert rows[0]["ratio"] == 1.0
