"""The floor under "added TTFT": one HTTP exchange on this machine, with nothing behind it.

Not a test. Serves a bare ASGI app with the gateway's own server settings (uvicorn with
uvloop and httptools, ``web.serve.make_server``) in a subprocess; it answers a chat
request at once with a two-chunk SSE stream (one token, then finish and usage), or the
JSON body when not streaming. The benchmark's own load generator (``HttpTarget``, the
client every gateway figure uses) times it at concurrency 1, so its TTFT is what any HTTP
gateway adds over an engine called in process before doing any work of its own.

    .venv/bin/python bench/http_floor.py [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bare import lifespan, read_body  # noqa: E402
from bench.loadgen import HttpTarget, RoundSpec, run_round  # noqa: E402
from bench.servers import free_port  # noqa: E402

CHUNK = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}\n\n'
)
LAST = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\ndata: [DONE]\n\n'
)
FULL = (
    b'{"id":"c","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
)


async def app(scope, receive, send):  # noqa: ANN001, ANN201 - a bare ASGI app
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    body = await read_body(receive)
    if b'"stream":true' in body.replace(b" ", b""):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": LAST})
    else:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": FULL})


def serve(port: int) -> None:
    from gpt_server.web.serve import bind_socket, make_server, run_async

    sock = bind_socket("127.0.0.1", port)
    server = make_server(app, sock)
    run_async(server.serve(sockets=[sock]))


async def measure(url: str, requests: int) -> dict[str, dict[str, float]]:
    target = HttpTarget("openai_chat", url, "m")
    await target.open(1, 30)
    out = {}
    try:
        for stream in (True, False):
            spec = RoundSpec(concurrency=1, requests=requests, stream=stream, max_tokens=1)
            await run_round(target, RoundSpec(concurrency=1, requests=20, stream=stream, max_tokens=1))  # warm-up
            samples, _, cpu = await run_round(target, spec)
            bad = [s.error for s in samples if not s.ok]
            if bad:
                raise RuntimeError(bad[0])
            vals = sorted((s.ttft if stream else s.e2e) * 1000 for s in samples)
            out["ttft" if stream else "e2e_nostream"] = {
                "p50": round(statistics.median(vals), 3),
                "p90": round(vals[int(0.9 * len(vals))], 3),
                "client_cpu_per_request": round(cpu / requests * 1000, 3),
            }
    finally:
        await target.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve)
        return 0
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.post(url + "/v1/chat/completions", content=b"{}", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        res = asyncio.run(measure(url, a.requests))
    finally:
        proc.terminate()
        proc.wait(10)
    for k, v in res.items():
        print(f"{k:13s} p50 {v['p50']:.3f} ms  p90 {v['p90']:.3f} ms  client CPU {v['client_cpu_per_request']:.3f} ms/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
