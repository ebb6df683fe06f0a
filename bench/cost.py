"""Where a streamed token's time goes: CPU per output token in every process and thread group,
and the engine's own split of a decode step, for the gateway (worker processes) and llama.cpp's
``llama-server`` on the same GGUF, threads and slots, in alternating windows of one run.

    python -m bench.cost --concurrency 1,8 --seconds 20 --rounds 2 --threads 2
    python -m bench.cost --sides gateway --seconds 3        # without llama-server (not built)
    python -m bench.cost --sides echo --concurrency 1       # the serving path alone (no model)

For each window (one side, one concurrency, ``--seconds`` of closed-loop streaming chat,
temperature 0, ``--max-tokens`` each) it reads every thread's CPU time from ``/proc`` before
and after and divides by the tokens the clients received:

- ``gateway``: the whole gateway process (our side only);
- ``engine threads``: the two busiest threads of the process that runs the model (the thread
  calling llama_decode and ggml's OpenMP worker, with ``--threads 2``; ``--threads`` of them);
- ``rest of engine process``: its other threads (our worker's event loop and HTTP; llama-server's
  HTTP threads);
- ``client``: the load generator (this process; the same code for both sides).

``--sides echo`` serves the no-op echo worker instead, paced like a decode loop
(``--echo-interval-ms`` between tokens): what the gateway and the worker's serving path cost
per token with no model competing for the cores (the worker's whole process counts as "rest").

Our worker also reports its decode loop (``/worker/info`` ``engine_stats``): per step, the time
inside ``llama_decode`` and on the engine thread around it (``host``: batch, sampling,
detokenizing, events). On a machine whose cores the engine's threads fill, every millisecond
of CPU outside them is taken from the decode, so these figures say what a token costs besides
the model.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .prompts import chat_prompt
from .run import LLAMA_MODEL
from .servers import Gateway, LlamaServer

__all__ = ["main", "thread_cpu", "Window"]

_HZ = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid`` so far."""
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / _HZ
    return out


def _delta(before: dict[int, float], after: dict[int, float]) -> list[float]:
    """Per-thread CPU seconds used between the two readings, busiest first."""
    return sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)


class Window:
    """``concurrency`` clients streaming chat from ``base_url`` for ``seconds``; tokens counted."""

    def __init__(self, base_url: str, model: str, headers: dict[str, str], concurrency: int, seconds: float, max_tokens: int) -> None:
        self.base_url, self.model, self.headers = base_url, model, headers
        self.concurrency, self.seconds, self.max_tokens = concurrency, seconds, max_tokens
        self.tokens = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._next = 0

    def _user(self, stop: float) -> None:
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=120) as c:
            while time.monotonic() < stop:
                with self._lock:
                    self._next += 1
                    i = self._next
                body = {"model": self.model, "messages": [{"role": "user", "content": chat_prompt(i)}],
                        "max_tokens": self.max_tokens, "temperature": 0, "stream": True}
                try:
                    with c.stream("POST", "/v1/chat/completions", json=body) as r:
                        r.raise_for_status()
                        n = 0
                        for line in r.iter_lines():
                            if line.startswith("data: {"):
                                choices = json.loads(line[6:]).get("choices") or [{}]
                                n += bool((choices[0].get("delta") or {}).get("content"))
                except httpx.HTTPError:
                    with self._lock:
                        self.errors += 1
                    continue
                with self._lock:
                    self.tokens += n

    def run(self) -> float:
        """Run the window; its wall seconds."""
        stop = time.monotonic() + self.seconds
        users = [threading.Thread(target=self._user, args=(stop,)) for _ in range(self.concurrency)]
        t0 = time.monotonic()
        for u in users:
            u.start()
        for u in users:
            u.join()
        return time.monotonic() - t0


def _engine_stats(gw: Gateway) -> dict[str, int]:
    w = gw.ready_workers[0]
    r = httpx.get(f"{w['address']}/worker/info", headers=gw.internal_headers(), timeout=10)
    r.raise_for_status()
    return r.json()["engine_stats"]


def measure(side: str, server: Any, model: str, headers: dict[str, str], pids: dict[str, int], concurrency: int,
            args: argparse.Namespace) -> dict[str, Any]:
    """One window on ``side``: tok/s and CPU ms per output token by process and thread group."""
    gw = server if side == "gateway" else None
    engine_pid = pids["llama-server"] if side == "llama-server" else pids["worker"]
    n_engine = 0 if side == "echo" else args.threads  # the echo worker has no compute threads
    before = {name: thread_cpu(pid) for name, pid in pids.items()}
    stats0 = _engine_stats(gw) if gw is not None else None
    me0 = time.process_time()
    win = Window(server.base_url, model, headers, concurrency, args.seconds, args.max_tokens)
    wall = win.run()
    client = time.process_time() - me0
    after = {name: thread_cpu(pid) for name, pid in pids.items()}
    tok = max(win.tokens, 1)
    row: dict[str, Any] = {"side": side, "c": concurrency, "tokens": win.tokens, "errors": win.errors,
                           "tok_per_s": round(win.tokens / wall, 1), "client_ms_per_tok": round(client / tok * 1e3, 3)}
    for name, pid in pids.items():
        per = _delta(before[name], after[name])
        if pid == engine_pid:
            row["engine_threads_ms_per_tok"] = round(sum(per[:n_engine]) / tok * 1e3, 3)
            row["engine_rest_ms_per_tok"] = round(sum(per[n_engine:]) / tok * 1e3, 3)
        else:
            row[f"{name}_ms_per_tok"] = round(sum(per) / tok * 1e3, 3)
    if gw is not None and stats0 is not None:
        s1 = _engine_stats(gw)
        steps = max(s1.get("step_steps", 0) - stats0.get("step_steps", 0), 1)
        row["steps"] = steps
        row["decode_ms_per_step"] = round((s1["step_decode_us"] - stats0["step_decode_us"]) / steps / 1e3, 3)
        row["host_ms_per_step"] = round((s1["step_host_us"] - stats0["step_host_us"]) / steps / 1e3, 3)
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| side | c | tok/s | gateway | engine threads | rest of engine process | client | decode ms/step | host ms/step |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        lines.append(
            f"| {r['side']} | {r['c']} | {r['tok_per_s']} | {r.get('gateway_ms_per_tok', '–')} | {r['engine_threads_ms_per_tok']} | "
            f"{r['engine_rest_ms_per_tok']} | {r['client_ms_per_tok']} | {r.get('decode_ms_per_step', '–')} | {r.get('host_ms_per_step', '–')} |"
        )
    return head + "\n".join(lines) + "\n"


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (side, c): the sums over its windows, per token."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
    for r in rows:
        groups[(r["side"], r["c"])].append(r)
    out = []
    for (side, c), rs in groups.items():
        tok = sum(r["tokens"] for r in rs) or 1
        s: dict[str, Any] = {"side": side, "c": c, "tok_per_s": round(sum(r["tok_per_s"] for r in rs) / len(rs), 1)}
        for k in ("gateway_ms_per_tok", "engine_threads_ms_per_tok", "engine_rest_ms_per_tok", "client_ms_per_tok"):
            if k in rs[0]:
                s[k] = round(sum(r[k] * r["tokens"] for r in rs) / tok, 3)
        for k in ("decode_ms_per_step", "host_ms_per_step"):
            if k in rs[0]:
                steps = sum(r["steps"] for r in rs) or 1
                s[k] = round(sum(r[k] * r["steps"] for r in rs) / steps, 3)
        out.append(s)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of one measured window")
    ap.add_argument("--rounds", type=int, default=2, help="windows per side and concurrency (sides alternate)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-parallel", type=int, default=8)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--compute-nice", type=int, default=None, help="gateway side: the model's compute_nice (default: its own)")
    ap.add_argument("--sides", default="gateway,llama-server", help="gateway, llama-server and/or echo")
    ap.add_argument("--echo-interval-ms", type=float, default=8.0, help="echo side: pause before each token")
    ap.add_argument("--out", default="bench/results/cost")
    args = ap.parse_args(argv)
    sides = [s for s in args.sides.split(",") if s]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from gpt_server.config import resolve_model_path

    t = str(args.threads)
    env = {"GPT_SERVER_THREADS": t, "OMP_NUM_THREADS": t, "HF_HUB_OFFLINE": "1", "GPT_SERVER_LOG_LEVEL": "warning"}
    servers: dict[str, tuple[Any, str, dict[str, str], dict[str, int]]] = {}
    try:
        if "gateway" in sides:
            mc = {"model_name_or_path": LLAMA_MODEL, "n_ctx": args.n_ctx, "n_parallel": args.n_parallel, "n_threads": args.threads}
            if args.compute_nice is not None:
                mc["compute_nice"] = args.compute_nice
            gw = Gateway([{"smollm2": {"model_config": mc, "work_mode": "llama_cpp", "device": "cpu", "workers": [{"gpus": []}]}}],
                         out, "gateway_cost", env)
            servers["gateway"] = (gw, "smollm2", {}, {})
            gw.wait()
            pids = gw.pids()
            servers["gateway"] = (gw, "smollm2", gw.headers(), {"gateway": pids["gateway"], "worker": pids["worker:smollm2:0"]})
        if "echo" in sides:
            mc = {"model_name_or_path": "echo", "n_parallel": 256, "token_interval_ms": args.echo_interval_ms}
            ec = Gateway([{"echo": {"model_config": mc, "work_mode": "echo", "workers": [{"gpus": []}]}}], out, "echo_cost", env)
            servers["echo"] = (ec, "echo", {}, {})
            ec.wait()
            pids = ec.pids()
            servers["echo"] = (ec, "echo", ec.headers(), {"gateway": pids["gateway"], "worker": pids["worker:echo:0"]})
        if "llama-server" in sides:
            from .llama_server import build

            ls = LlamaServer(str(build()), resolve_model_path(LLAMA_MODEL), args.threads, args.n_ctx, args.n_parallel, out)
            servers["llama-server"] = (ls, "llama-server", {}, {})
            ls.wait()
            servers["llama-server"] = (ls, "llama-server", {}, {"llama-server": ls.proc.pid})
        for srv, model, headers, _ in servers.values():  # warm-up: the first request of each
            Window(srv.base_url, model, headers, 1, 0.01, 8).run()
        rows: list[dict[str, Any]] = []
        for c in [int(x) for x in args.concurrency.split(",") if x]:
            for rnd in range(args.rounds):
                order = sides if rnd % 2 == 0 else list(reversed(sides))
                for side in order:
                    srv, model, headers, pids = servers[side]
                    row = measure(side, srv, model, headers, pids, c, args)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    finally:
        for srv, *_ in servers.values():
            srv.stop()
    summary = _summary(rows)
    report = ("CPU ms per output token by process and thread group; the engine's decode step split "
              f"(ours only). {args.seconds:g} s windows, {args.rounds} per side and concurrency, --threads {args.threads}, "
              f"{args.max_tokens} tokens per answer.\n\n" + _table(summary))
    (out / "cost.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    (out / "cost.md").write_text(report)
    print(report)
    return 0 if all(r["errors"] == 0 and r["tokens"] > 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
