"""Two gateways against the same in-process engine, in one run (a regression check).

Not a test. Starts ``gpt-server serve`` from this checkout ("new") and either from another
one (``--old``, e.g. ``git worktree add /tmp/old <commit>``) or, with ``--in-process``, from
this checkout with the worker running inside the gateway process ("inproc"), each with the
packaged SmolLM2 GGUF on llama.cpp, plus the in-process ``LlamaEngine`` baseline, then runs
alternating closed-loop rounds (order flipping each round) so that load from elsewhere hits
all three alike:

    .venv/bin/python bench/ab_gateways.py --old /tmp/old --concurrency 1 --requests 8 --rounds 12
    .venv/bin/python bench/ab_gateways.py --in-process --concurrency 1 --requests 8 --rounds 12
    .venv/bin/python bench/ab_gateways.py --in-process --bare --concurrency 1 --requests 8 --rounds 12

Prints tok/s, TTFT/TPOT p50 and each gateway ÷ direct. ``--bare`` adds a fourth side: the
same engine behind a bare HTTP server (``bench/bare.py``), the floor for any HTTP server
on this machine; each gateway is then also compared with it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench.servers as servers  # noqa: E402
from bench.metrics import SLO, Sample, summarise  # noqa: E402
from bench.run import LLAMA_MODEL, _env, _llama_entry, build_parser  # noqa: E402


def _tps(rnd: dict) -> float:
    """Output tokens/s of one round."""
    return sum(x["tokens"] for x in rnd["samples"] if x["ok"]) / max(rnd["wall"], 1e-9)


def _spread(ratios: list[float]) -> str:
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return f"{statistics.median(ratios):.3f} [{q[0]:.3f}–{q[2]:.3f}] ({min(ratios):.3f}–{max(ratios):.3f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--old", help="the other checkout (its gpt_server package is served)")
    which.add_argument("--in-process", action="store_true", help="compare with this checkout's in_process worker")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=8, help="requests per round")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nostream", action="store_true")
    ap.add_argument("--bare", action="store_true",
                    help="add the same engine behind a bare HTTP server (bench.bare): the floor for any HTTP gateway")
    ap.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for both gateways and their workers (not the direct engine)")
    a = ap.parse_args()
    from gpt_server.config import resolve_model_path

    args = build_parser().parse_args(["--threads", str(a.threads), "--n-parallel", "8", "--max-tokens", str(a.max_tokens)])
    genv = {**_env(args), **dict(kv.split("=", 1) for kv in a.gateway_env)}
    out = ROOT / "bench" / "results" / "ab"
    out.mkdir(parents=True, exist_ok=True)
    if a.in_process:
        other = "inproc"
        entry = _llama_entry(args)
        next(iter(entry.values()))["workers"] = [{"gpus": [], "in_process": True}]
        old = servers.Gateway([entry], out, "gateway_inproc", genv)
    else:
        other = "old"
        old_root = Path(a.old).resolve()
        servers.ROOT = old_root  # the old gateway and its workers import the old package
        old = servers.Gateway([_llama_entry(args)], out, "gateway_old", {**genv, "PYTHONPATH": str(old_root)})
        servers.ROOT = ROOT
    new = servers.Gateway([_llama_entry(args)], out, "gateway_new", genv)
    bare = None
    if a.bare:
        bare = servers.BareServer(
            ["--llama", resolve_model_path(LLAMA_MODEL), "--threads", str(a.threads), "--n-parallel", "8"], out, "bare", _env(args)
        )
    sides: dict[str, servers.Agent] = {}
    try:
        old.wait()
        new.wait()
        sides = {
            other: servers.Agent({"kind": "openai_chat", "base_url": old.base_url, "model": "smollm2"}, out, f"ab_{other}"),
            "new": servers.Agent({"kind": "openai_chat", "base_url": new.base_url, "model": "smollm2"}, out, "ab_new"),
            "direct": servers.Agent(
                {"kind": "direct_llama", "model_path": resolve_model_path(LLAMA_MODEL), "n_parallel": 8,
                 "n_threads": a.threads, "n_ctx": 2048},
                out, "ab_direct", _env(args),
            ),
        }
        if bare is not None:
            bare.wait()
            sides["bare"] = servers.Agent({"kind": "openai_chat", "base_url": bare.base_url, "model": "smollm2"}, out, "ab_bare")
        sides["direct"].wait()
        spec = {"concurrency": a.concurrency, "requests": a.requests, "stream": not a.nostream, "max_tokens": a.max_tokens}
        for agent in sides.values():
            agent.round({**spec, "requests": 4})  # warm-up
        got: dict[str, list[dict]] = {k: [] for k in sides}
        names = list(sides)
        for r in range(a.rounds):
            for k in names if r % 2 == 0 else names[::-1]:
                got[k].append(sides[k].round(spec))
        res = {}
        for k, rounds in got.items():
            samples = [Sample(**x) for rr in rounds for x in rr["samples"]]
            res[k] = s = summarise(samples, sum(rr["wall"] for rr in rounds), SLO(2000, 200), 0)
            print(f"{k:7s} tok/s {s['output_tokens_per_s']:8.1f}  TTFT p50 {s['ttft_ms']['p50']}  "
                  f"TPOT p50 {s['tpot_ms']['p50']}  E2E p50 {s['e2e_ms']['p50']}  errors {s['errors']}")
        d = res["direct"]["output_tokens_per_s"]
        print(f"c={a.concurrency}: " + ", ".join(f"{k} ÷ direct {res[k]['output_tokens_per_s'] / d:.3f}" for k in res if k != "direct"))
        # each round's ratio to the direct round run beside it: how much the rounds agree
        print("per-round ÷ direct, median [quartiles] (min–max): " + ", ".join(
            f"{k} {_spread([_tps(x) / _tps(y) for x, y in zip(got[k], got['direct'], strict=True)])}"
            for k in res if k != "direct"))
        if "bare" in res:
            b, bt = res["bare"]["output_tokens_per_s"], res["bare"]["ttft_ms"]["p50"]
            print("vs bare HTTP: " + ", ".join(
                f"{k} ÷ bare {res[k]['output_tokens_per_s'] / b:.3f} (TTFT p50 {res[k]['ttft_ms']['p50'] - bt:+.2f} ms)"
                for k in (other, "new")) + f"; bare TTFT p50 over direct {bt - res['direct']['ttft_ms']['p50']:+.2f} ms")
    finally:
        for agent in sides.values():
            agent.stop()
        old.stop()
        new.stop()
        if bare is not None:
            bare.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
