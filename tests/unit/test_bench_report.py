"""The benchmark report's target checks: a ratio at the target counts as met only where the run's
95% interval stays at or above it too."""

from __future__ import annotations

from typing import Any

from bench.report import check_targets, markdown


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
