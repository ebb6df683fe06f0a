"""GPU smoke check: the transformers and sentence-transformers engines on a CUDA device,
through a real `gpt-server serve`, driven by the openai SDK.

Opt-in, for a machine with an NVIDIA GPU (not part of the test suite). It builds a tiny
random Llama chat model (with the tokenizer directory given, e.g. SmolLM2's) and a tiny
random BERT embedding model, serves both with `device: gpu, workers: [{gpus: [0]}]`, and
checks chat (plain, streamed, n), enforced tool calls, JSON-schema output, tokenize and
embeddings, that the weights really sit on the GPU, and prints a JSON report.

    python scripts/gpu_smoke.py --tokenizer DIR [--out report.json] [--bench]

`--bench` adds a throughput table for the transformers engine: a random model with
SmolLM2-135M's shape served through the gateway at concurrency 1/4/8 (128-token answers)
against transformers' own `generate` on the same weights with batch 1/4/8, in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_models(tok_dir: Path, root: Path) -> tuple[Path, Path]:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    llm = root / "tiny-llama"
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(llm)
    tok.save_pretrained(llm)

    emb = root / "tiny-bert"
    words = [f"w{i}" for i in range(500)]
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    wp = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(emb)
    fast.save_pretrained(emb)
    return llm, emb


def build_smollm_shape(tok_dir: Path, root: Path) -> Path:
    """Random weights in SmolLM2-135M's exact shape (576 wide, 30 layers, GQA 9/3, tied embeddings)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    out = root / "smollm-shape"
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run_bench(base: str, model_dir: Path, device: str, tokens: int) -> dict[str, Any]:
    """Aggregate tok/s through the gateway (c = 1/4/8) and with transformers' generate (batch 1/4/8)."""
    import concurrent.futures as cf

    import openai
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    c = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=300)
    dev = "cuda" if device == "gpu" else "cpu"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(dev).eval()
    tok.padding_side = "left"

    def prompts(n: int) -> list[list[dict[str, str]]]:
        return [[{"role": "user", "content": f"Tell me a long story about the number {i}."}] for i in range(n)]

    def gateway(conc: int) -> dict[str, float]:
        def one(msgs: list[dict[str, str]]) -> tuple[int, float]:
            t0 = time.monotonic()
            first = 0.0
            n = 0
            for ch in c.chat.completions.create(model="big", messages=msgs, max_tokens=tokens, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
                if ch.choices and ch.choices[0].delta.content and not first:
                    first = time.monotonic() - t0
                if ch.usage:
                    n = ch.usage.completion_tokens
            return n, first

        t = time.monotonic()
        with cf.ThreadPoolExecutor(conc) as ex:
            res = list(ex.map(one, prompts(conc)))
        wall = time.monotonic() - t
        ttft = sorted(r[1] for r in res)[len(res) // 2]
        return {"tok_s": round(sum(r[0] for r in res) / wall, 1), "ttft_p50_ms": round(ttft * 1000, 1),
                "tokens": sum(r[0] for r in res)}

    def direct(batch: int) -> dict[str, float]:
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts(batch)]
        enc = tok(texts, return_tensors="pt", padding=True).to(dev)
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.monotonic()
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        if dev == "cuda":
            torch.cuda.synchronize()
        wall = time.monotonic() - t
        new = out[:, enc["input_ids"].shape[1]:]
        eos = tok.eos_token_id
        n = int(sum(int((row != tok.pad_token_id).sum()) if eos is None else len(row) for row in new))
        return {"tok_s": round(n / wall, 1), "tokens": n}

    gateway(1)  # warm both paths
    direct(1)
    table: dict[str, Any] = {}
    for conc in (1, 4, 8):
        rounds = [(gateway(conc), direct(conc)) for _ in range(2)]  # alternating, best of two
        g = max((r[0] for r in rounds), key=lambda x: x["tok_s"])
        d = max((r[1] for r in rounds), key=lambda x: x["tok_s"])
        table[f"c{conc}"] = {"gateway": g, "generate": d, "ratio": round(g["tok_s"] / d["tok_s"], 2)}
    return table


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--device", choices=["gpu", "cpu"], default="gpu", help="cpu: try the script without a GPU")
    ap.add_argument("--bench", action="store_true", help="also measure a SmolLM2-135M-shaped model: gateway vs generate")
    ap.add_argument("--bench-tokens", type=int, default=128)
    args = ap.parse_args()
    report: dict[str, Any] = {"checks": {}}
    root = Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    t0 = time.monotonic()
    llm, emb = build_models(args.tokenizer, root)
    big = build_smollm_shape(args.tokenizer, root) if args.bench else None
    report["build_s"] = round(time.monotonic() - t0, 1)
    port, cport = free_port(), free_port()
    gpu = {"device": "gpu", "workers": [{"gpus": [0]}]} if args.device == "gpu" else {"device": "cpu", "workers": [{"gpus": []}]}
    config = {
        "serve_args": {"host": "127.0.0.1", "port": port},
        "controller_args": {"host": "127.0.0.1", "port": cport},
        "model_worker_args": {"heartbeat_interval": 1.0},
        "models": [
            {"llm": {"model_config": {"model_name_or_path": str(llm), "n_parallel": 8, "dtype": "bfloat16"},
                     "model_type": "auto", "work_mode": "hf", **gpu}},
            {"emb": {"model_config": {"model_name_or_path": str(emb)}, "model_type": "embedding",
                     "work_mode": "sentence_transformers", **gpu}},
        ],
    }
    if big is not None:
        config["models"].append(
            {"big": {"model_config": {"model_name_or_path": str(big), "n_parallel": 8, "dtype": "bfloat16"},
                     "model_type": "auto", "work_mode": "hf", **gpu}})
    want = len(config["models"])
    cfg_path = root / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    log = open(root / "serve.log", "wb")  # noqa: SIM115 - closed at the end
    proc = subprocess.Popen([sys.executable, "-m", "gpt_server.cli", "serve", "-c", str(cfg_path)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("server exited")
            try:
                if len(httpx.get(f"{base}/v1/models", timeout=2).json().get("data", [])) >= want:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("not ready in 300 s")
        report["ready_s"] = round(time.monotonic() - t0, 1)
        run_checks(base, report, args.device)
        if big is not None:
            report["bench"] = run_bench(base, big, args.device, args.bench_tokens)
    except Exception as exc:  # noqa: BLE001 - the report says what failed
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        report["log_tail"] = (root / "serve.log").read_text(errors="replace")[-3000:]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    ok = "error" not in report and all(report["checks"].values())
    return 0 if ok else 1


def run_checks(base: str, report: dict[str, Any], device: str) -> None:
    import openai

    c = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=120)
    checks = report["checks"]
    msgs = [{"role": "user", "content": "Hello there"}]
    r = c.chat.completions.create(model="llm", messages=msgs, max_tokens=16, temperature=0)
    checks["chat"] = bool(r.choices[0].message.content is not None and r.usage.completion_tokens > 0)
    full = c.chat.completions.create(model="llm", messages=msgs, max_tokens=16, temperature=0)
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(model="llm", messages=msgs, max_tokens=16, temperature=0, stream=True)
        if ch.choices
    )
    checks["stream_equals_non_stream"] = streamed == full.choices[0].message.content
    r = c.chat.completions.create(model="llm", messages=msgs, max_tokens=8, n=3, temperature=1.0, seed=1)
    checks["n3"] = len(r.choices) == 3
    tool = {"type": "function", "function": {"name": "pick", "parameters": {
        "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}}}
    r = c.chat.completions.create(model="llm", messages=msgs, tools=[tool], tool_choice="required", max_tokens=64)
    calls = r.choices[0].message.tool_calls or []
    checks["enforced_tool_call"] = bool(calls) and isinstance(json.loads(calls[0].function.arguments)["ok"], bool)
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    r = c.chat.completions.create(model="llm", messages=msgs, max_tokens=64,
                                  response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    checks["json_schema"] = 0 <= json.loads(r.choices[0].message.content or "{}").get("n", -1) <= 9
    tk = httpx.post(f"{base}/tokenize", json={"model": "llm", "messages": msgs}, timeout=30).json()
    usage = c.chat.completions.create(model="llm", messages=msgs, max_tokens=1).usage
    checks["tokenize_counts_chat_prompt"] = tk.get("count") == usage.prompt_tokens
    e = c.embeddings.create(model="emb", input=["w1 w2 w3", "w4 w5"])
    checks["embeddings"] = len(e.data) == 2 and len(e.data[0].embedding) == 32
    # throughput: 16 concurrent streams of 64 tokens (random weights: speed of the serving path)
    import concurrent.futures as cf

    def one(i: int) -> int:
        rr = c.chat.completions.create(model="llm", messages=[{"role": "user", "content": f"story {i}"}],
                                       max_tokens=64, temperature=1.0, seed=i)
        return int(rr.usage.completion_tokens)

    t = time.monotonic()
    with cf.ThreadPoolExecutor(16) as ex:
        toks = sum(ex.map(one, range(16)))
    report["c16_tokens_per_s"] = round(toks / (time.monotonic() - t), 1)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                             capture_output=True, text=True)
        report["nvidia_smi_apps"] = smi.stdout.strip().splitlines()
    except OSError:
        report["nvidia_smi_apps"] = []
    if device == "gpu":
        checks["weights_on_gpu"] = len(report["nvidia_smi_apps"]) >= 2  # both worker processes hold CUDA memory
    report["dashboard"] = httpx.get(f"{base}/v1/dashboard", timeout=10).json().get("models")


if __name__ == "__main__":
    sys.exit(main())
