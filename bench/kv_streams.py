"""What a llama.cpp decode step costs by where its sequences sit (one KV stream per slot).

    python -m bench.kv_streams [--weights q4_1|f32|...] [--slots 8] [--repeat 10]

Loads the packaged GGUF (or a requantised copy from ``bench.speculative``'s cache), prefills
every slot, then times single decode steps of one token for each slot in a layout (medians):
adjacent slots, every other slot, scattered ones. llama.cpp splits a batch into micro-batches
of consecutive sequence ids, so non-adjacent slots cost a pass over the weights each. Then
plain steps alone against plain steps alternating with a step of three rows per sequence (a
shape change rebuilds llama.cpp's graph). Numbers: bench/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import llama_cpp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="q4_1", help="q4_1 (packaged) or a type bench.speculative --weights takes")
    p.add_argument("--slots", type=int, default=8, choices=range(2, 17), metavar="2..16")
    p.add_argument("--repeat", type=int, default=10, choices=range(3, 101), metavar="3..100")
    p.add_argument("--threads", type=int, default=2, choices=range(1, 65), metavar="1..64")
    args = p.parse_args()

    from gpt_server.config import resolve_model_path

    from .speculative import model_path

    path = resolve_model_path(model_path(args.weights))
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.use_extra_bufts = False
    model = llama_cpp.llama_model_load_from_file(path.encode(), mp)
    if not model:
        raise SystemExit(f"could not load {path}")
    n = args.slots
    base = min(60, 480 // n)  # prompt tokens per slot (one prefill batch of at most 512)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_seq_max, cp.kv_unified = n * 512, 512, n, False
    cp.n_threads = cp.n_threads_batch = args.threads
    ctx = llama_cpp.llama_init_from_model(model, cp)
    mem = llama_cpp.llama_get_memory(ctx)
    b = llama_cpp.llama_batch_init(512, 0, 1)

    def put(lens: list[int], prefill: bool = False) -> None:
        k = 0
        for s, count in enumerate(lens):
            for j in range(count):
                b.token[k] = 200 + j if prefill else 100 + (s * 7 + j) % 500
                b.pos[k] = j if prefill else base + j
                b.n_seq_id[k] = 1
                b.seq_id[k][0] = s
                b.logits[k] = 0 if prefill else 1
                k += 1
        b.n_tokens = k
        assert llama_cpp.llama_decode(ctx, b) == 0

    def step(lens: list[int]) -> float:
        for s in range(n):
            llama_cpp.llama_memory_seq_rm(mem, s, base, -1)
        t = time.perf_counter()
        put(lens)
        return time.perf_counter() - t

    put([base] * n, prefill=True)
    half = n // 2
    layouts = {
        f"adjacent x{half}": [1] * half + [0] * (n - half),
        f"every other x{half}": [1 if i % 2 == 0 else 0 for i in range(n)],
        "first and last": [1] + [0] * (n - 2) + [1],
        "first two": [1, 1] + [0] * (n - 2),
        f"all {n}": [1] * n,
        "all but one in the middle": [0 if i == half - 1 else 1 for i in range(n)],
    }
    print(f"{path}\none token per marked slot, {n} slots, median of {args.repeat} (ms):")
    for name, lens in layouts.items():
        ts = [step(lens) for _ in range(args.repeat + 2)][2:]
        print(f"  {name:28s} {''.join('x' if c else '.' for c in lens)}  {statistics.median(ts) * 1e3:7.1f}")
    print("plain steps alone / alternating with 3 rows per sequence (graph rebuilt on a shape change):")
    for count in sorted({2, half}):
        plain, other = [1] * count + [0] * (n - count), [3] * count + [0] * (n - count)
        steady = [step(plain) for _ in range(2 * args.repeat)]
        alt = [step(lens) for _ in range(args.repeat) for lens in (plain, other)][0::2]
        print(f"  {count} sequences: {statistics.median(steady) * 1e3:.2f} / {statistics.median(alt) * 1e3:.2f}")
    llama_cpp.llama_batch_free(b)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)


if __name__ == "__main__":
    main()
