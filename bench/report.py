"""Turn a results dict into report.md (tables + target checks) and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_report", "markdown", "check_targets", "plot"]

_TITLES = {
    "direct": "Chat: gateway (A) vs LlamaEngine in-process (B)",
    "peer": "Chat: gateway (A) vs python -m llama_cpp.server (B)",
    "llamaserver": "Chat: gateway (A) vs llama.cpp's C++ llama-server (B)",
    "embed": "Embeddings: gateway (A) vs sentence-transformers in-process (B)",
    "echo": "No-op echo worker: gateway (A) vs /worker/generate direct (B)",
    "old_chat": "Before/after (--old): chat, this gateway (A) vs the old checkout's (B)",
    "old_embed": "Before/after (--old): embeddings, this gateway (A) vs the old checkout's (B)",
    "old_echo": "Before/after (--old): echo, this gateway (A) vs the old checkout's (B)",
}


def _f(v: Any, nd: int = 1) -> str:
    return "–" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    key = rows[0]["rate_key"] if rows else "requests_per_s"
    unit = "tok/s" if key == "output_tokens_per_s" else "req/s"
    out = [
        f"| mode | c | A {unit} | B {unit} | A÷B | rounds' A÷B: median, 95% CI of A÷B | A req/s | B req/s | A TTFT p50 | B TTFT p50 | ΔTTFT p50 | "
        "A TPOT p50 | B TPOT p50 | A E2E p50/p90/p99 | B E2E p50/p90/p99 | ΔE2E p50 | A goodput | err A/B |",
        "|" + "---|" * 18,
    ]
    for r in rows:
        a, b = r["A"], r["B"]
        e = lambda s: "/".join(_f(s["e2e_ms"][k]) for k in ("p50", "p90", "p99"))  # noqa: E731
        out.append(
            f"| {r['mode']} | {r['concurrency']} | {_f(a[key])} | {_f(b[key])} | {_f(r['ratio'], 3)} | {_rounds(r)} | "
            f"{_f(a['requests_per_s'])} | {_f(b['requests_per_s'])} | {_f(a['ttft_ms']['p50'], 2)} | {_f(b['ttft_ms']['p50'], 2)} | "
            f"{_f(r['delta_ttft_p50_ms'], 2)} | {_f(a['tpot_ms']['p50'], 2)} | {_f(b['tpot_ms']['p50'], 2)} | {e(a)} | {e(b)} | "
            f"{_f(r['delta_e2e_p50_ms'], 2)} | {_f(a['goodput_req_per_s'])} | {a['errors']}/{b['errors']} |"
        )
    return out


def _rounds(row: dict[str, Any]) -> str:
    r = row.get("rounds") or {}
    if not r.get("n"):
        return "–"
    ci = r.get("ci95")
    return f"{_f(r['median'], 3)}, {_f(ci[0], 3)}–{_f(ci[1], 3)} (n={r['n']})" if ci else f"{_f(r['median'], 3)} (n={r['n']})"


def _rows(res: dict[str, Any], pair: str, mode: str | None = None) -> list[dict[str, Any]]:
    rows = res["pairs"].get(pair, {}).get("rows", [])
    return [r for r in rows if mode is None or r["mode"] == mode]


def _at_least(ratio: float | None, ci: list[float] | None, want: float) -> bool | None:
    """Met where the run's ratio reaches ``want`` and so does its 95% interval's lower end (where
    the run has one); not shown (None) where only the ratio does; not met where the ratio falls short."""
    if ratio is None:
        return None
    if ratio < want:
        return False
    return True if ci is None or ci[0] >= want else None


def check_targets(res: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for every target of issues 4 and 23 the run has figures for."""
    out: list[tuple[str, str, bool | None]] = []
    for r in _rows(res, "direct", "stream"):
        if r["concurrency"] in (1, 4, 16):
            out.append((f"gateway÷direct tok/s ≥ 0.98 (stream, c={r['concurrency']})", _f(r["ratio"], 3),
                        None if r["ratio"] is None else r["ratio"] >= 0.98))
        if r["concurrency"] == 1:
            d = r["delta_ttft_p50_ms"]
            out.append(("added TTFT p50 ≤ 1 ms (stream, c=1)", f"{_f(d, 2)} ms", None if d is None else d <= 1.0))
    for r in _rows(res, "peer", "stream"):
        if r["concurrency"] == 8:
            out.append(("decode tok/s at c=8 ≥ 2× peer (stream)", f"{_f(r['ratio'], 2)}×", None if r["ratio"] is None else r["ratio"] >= 2.0))
    for r in _rows(res, "llamaserver", "stream"):
        c = r["concurrency"]
        want = 1.0 if c in (1, 8) else 0.97
        ci = (r.get("rounds") or {}).get("ci95")
        out.append((f"tok/s ≥ {want}× llama-server (stream, c={c})",
                     f"{_f(r['ratio'], 3)}×" + (f" (95% CI {_f(ci[0], 3)}–{_f(ci[1], 3)})" if ci else ""),
                     _at_least(r["ratio"], ci, want)))
        if c == 1:
            d = r["delta_ttft_p50_ms"]
            out.append(("TTFT p50 within +2 ms of llama-server (stream, c=1)", f"{_f(d, 2)} ms", None if d is None else d <= 2.0))
    echo = _rows(res, "echo")
    if echo:
        best = max(echo, key=lambda r: r["A"]["requests_per_s"])
        out.append(("echo ≥ 600 req/s through the gateway", f"{_f(best['A']['requests_per_s'])} req/s "
                    f"({best['mode']}, c={best['concurrency']})", best["A"]["requests_per_s"] >= 600))
        c1 = [r for r in echo if r["concurrency"] == 1]
        for r in c1:
            d = r["delta_e2e_p50_ms"]
            out.append((f"echo added p50 ≤ 1 ms ({r['mode']}, c=1)", f"{_f(d, 2)} ms", None if d is None else d <= 1.0))
    return out


def markdown(res: dict[str, Any]) -> str:
    m = res["meta"]
    lines = [
        "# GPT Server benchmark",
        "",
        f"Started {m['started']} · {m['cpu_count']} CPUs · {m['platform']} · Python {m['python']} · "
        f"load average at start {tuple(round(x, 2) for x in m['loadavg_start'])}, at end "
        f"{tuple(round(x, 2) for x in m.get('loadavg_end', ()))}",
        "",
        "Times in ms. A÷B is output tok/s for chat pairs and req/s for embeddings and echo. "
        "Δ = A − B (what the gateway adds). TPOT = (E2E − TTFT)/(tokens − 1). Goodput: requests/s meeting the SLO "
        f"(TTFT ≤ {m['args']['slo_ttft_ms']} ms, TPOT ≤ {m['args']['slo_tpot_ms']} ms).",
        "",
    ]
    targets = check_targets(res)
    if targets:
        lines += ["## Targets (issues 4 and 23)", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t} | {v} | {'–' if ok is None else 'yes' if ok else 'NO'} |" for t, v, ok in targets]
        lines += ["", "–: not shown (a ratio at the target whose 95% interval reaches below it, or no figure)."]
        lines.append("")
    for pair, body in res["pairs"].items():
        lines += [f"## {_TITLES.get(pair, pair)}", ""]
        if "skipped" in body:
            lines += [f"Skipped: {body['skipped']}", ""]
            continue
        lines += _table(body["rows"]) + [""]
        cpu = [r["A"].get("client_cpu_share") for r in body["rows"]]
        if any(c is not None for c in cpu):
            lines += [f"Load-generator CPU share (A side, CPU s ÷ wall s): max {max(c for c in cpu if c is not None):.2f}", ""]
    if "onnx" in res:
        from .onnx_embed import markdown_section

        lines += markdown_section(res["onnx"])
    if res.get("rss"):
        lines += ["## Memory (RSS, MiB) and CPU", "",
                  "CPU s: what the process used over the whole group (both sides' rounds); "
                  "gateway CPU per request divides the gateway's by the requests sent through it.", "",
                  "| group | process | idle RSS | peak RSS under load | CPU s |", "|---|---|---|---|---|"]
        for group, procs in res["rss"].items():
            lines += [f"| {group} | {k} | {_f(v.get('idle_mb'))} | {_f(v.get('load_peak_mb'))} | {_f(v.get('cpu_s'), 2)} |"
                      for k, v in procs.items()]
        lines.append("")
        for group, ms in res.get("gateway_cpu_ms_per_request", {}).items():
            lines.append(f"- gateway CPU per request ({group}): {_f(ms, 2)} ms")
        lines.append("")
    return "\n".join(lines)


def plot(res: dict[str, Any], out: Path) -> list[Path]:
    """One PNG per pair: throughput vs concurrency, and p50 latencies vs concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for pair, body in res["pairs"].items():
        rows = body.get("rows") or []
        if not rows:
            continue
        key = rows[0]["rate_key"]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for mode in sorted({r["mode"] for r in rows}):
            rs = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["concurrency"])
            cs = [r["concurrency"] for r in rs]
            for side, style in (("A", "-o"), ("B", "--s")):
                label = f"{body[side]} ({mode})"
                ax1.plot(cs, [r[side][key] for r in rs], style, label=label)
                ax2.plot(cs, [r[side]["e2e_ms"]["p50"] for r in rs], style, label=f"E2E p50 {label}")
                if mode == "stream" and any(r[side]["ttft_ms"]["p50"] is not None for r in rs):
                    ax2.plot(cs, [r[side]["ttft_ms"]["p50"] for r in rs], style, alpha=0.5, label=f"TTFT p50 {label}")
        ax1.set(xlabel="concurrency", ylabel=key.replace("_", " "), title="throughput")
        ax2.set(xlabel="concurrency", ylabel="ms (log)", title="latency p50", yscale="log")
        for ax in (ax1, ax2):
            ax.set_xscale("log", base=2)
            ax.minorticks_off()
            ax.set_xticks(cs, [str(c) for c in cs])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(_TITLES.get(pair, pair))
        fig.tight_layout()
        path = out / f"{pair}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        files.append(path)
    return files


def write_report(res: dict[str, Any], out: Path, plots: bool = True) -> None:
    text = markdown(res)
    if plots:
        files = plot(res, out)
        text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in files) + "\n"
    (out / "report.md").write_text(text)
    print(text, flush=True)
