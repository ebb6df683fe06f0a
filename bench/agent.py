"""A measuring process: ``python -m bench.agent '<target json>'``.

Each target runs in its own process, apart from the servers it measures. The first
stdout line is ``{"ready": true, "pid": …}``; then every stdin line is a ``RoundSpec``
as JSON and gets one result line back: ``{"samples": [...], "wall": s, "cpu": s}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict
from typing import Any

from .loadgen import HttpTarget, RoundSpec, run_round

__all__ = ["make_target", "main"]


def make_target(cfg: dict[str, Any]) -> Any:
    kind = cfg["kind"]
    if kind == "direct_llama":
        from .direct import DirectLlama

        return DirectLlama(cfg["model_path"], cfg["n_parallel"], cfg["n_threads"], cfg.get("n_ctx", 2048))
    if kind == "direct_st":
        from .direct import DirectST

        return DirectST(cfg["model_path"], cfg["n_threads"])
    return HttpTarget(kind, cfg["base_url"], cfg["model"], cfg.get("api_key"))


async def _serve(target: Any) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        spec = RoundSpec(**json.loads(line))
        await target.open(spec.concurrency, spec.timeout_s)
        try:
            samples, wall, cpu = await run_round(target, spec)
        finally:
            await target.close()
        out = {"samples": [asdict(s) for s in samples], "wall": wall, "cpu": cpu}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    import os

    argv = sys.argv[1:] if argv is None else argv
    cfg = json.loads(argv[0])
    target = make_target(cfg)
    sys.stdout.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    try:
        try:
            import uvloop

            uvloop.run(_serve(target))
        except ImportError:
            asyncio.run(_serve(target))
    finally:
        if hasattr(target, "shutdown"):
            target.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
