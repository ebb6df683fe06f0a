"""A small run of ``python -m bench.multiturn`` (interactive session vs stateless full history).

Not a timing gate: it checks the mode runs end to end against a real server and that the
JSON it writes is sane (the session's history grows, the stateless request carries it all,
the ratio is computed).
"""

from __future__ import annotations

import json
import time

from bench.multiturn import build_parser, run


def test_multiturn_bench_smoke(tmp_path) -> None:  # noqa: ANN001
    args = build_parser().parse_args(["--turns", "3", "--reps", "1", "--replicas", "1", "--max-tokens", "4", "--n-ctx", "1024", "--out", str(tmp_path)])
    t0 = time.monotonic()
    res = run(args)
    assert time.monotonic() - t0 < 90
    assert json.loads((tmp_path / "multiturn.json").read_text()) == res
    (r,) = res["runs"]
    assert len(r["session_ttft_ms"]) == 3 and all(t > 0 for t in r["session_ttft_ms"])
    assert r["session_last_history_tokens"] > 0 and r["session_last_input_tokens"] > 0
    # the stateless request carries the whole conversation: the history and the new turn
    assert r["stateless_prompt_tokens"] >= r["session_last_history_tokens"] + r["session_last_input_tokens"] - 8
    assert res["ratio_stateless_over_session"] == round(res["stateless_last_ttft_ms_p50"] / res["session_last_ttft_ms_p50"], 3)


def test_multiturn_chat_mode_smoke(tmp_path) -> None:  # noqa: ANN001
    """``--chat``: concurrent stateless conversations (llama-server left out: CI does not build it)."""
    args = build_parser().parse_args(
        ["--chat", "--no-peer", "--conversations", "2", "--turns", "3", "--reps", "1", "--max-tokens", "4", "--n-ctx", "1024", "--out", str(tmp_path)]
    )
    res = run(args)
    assert json.loads((tmp_path / "multiturn.json").read_text()) == res
    assert "llama-server" not in res
    (rnd,) = res["gateway"]["rounds"]
    assert len(rnd["conversations"]) == 2
    for conv in rnd["conversations"]:
        assert len(conv["ttft_ms"]) == 3 and all(t > 0 for t in conv["ttft_ms"])
        assert conv["full_prefill_ms"] > 0 and conv["last_prompt_tokens"] > 0
    g = res["gateway"]
    assert g["full_over_late"] == round(g["full_prefill_ms_p50"] / g["late_ttft_ms_p50"], 3)
