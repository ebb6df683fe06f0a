"""A bare HTTP server over the in-process engines: the floor for any HTTP gateway here.

Not part of GPT Server. ``python -m bench.bare --port P --llama GGUF`` (or ``--st DIR``)
serves the same engine the direct baselines call (``DirectLlama``: template, tokenizer
on a thread, ``LlamaEngine``; or a SentenceTransformer on one engine thread) from a bare
ASGI app under the gateway's own server settings (uvicorn, uvloop, httptools). Per
request it does only what any HTTP server must: read the body, parse it, write each
token as one SSE event (or the JSON body). No routing, validation, auth, dispatch,
worker hop, metrics or error handling. Whatever a benchmark measures between this and
the engine called in process is the price of HTTP itself on this machine (the
client's CPU included, since client and server share its cores); what the gateway
costs beyond it is ours.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
from typing import Any

import orjson

__all__ = ["build_app", "lifespan", "read_body", "main"]

_SSE = [(b"content-type", b"text/event-stream")]
_JSON = [(b"content-type", b"application/json")]


async def lifespan(receive: Any, send: Any, on_shutdown: Any = None) -> None:
    """Answer an ASGI lifespan scope."""
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            if on_shutdown is not None:
                on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Any) -> bytes:
    raw = b""
    while True:
        msg = await receive()
        raw += msg.get("body", b"")
        if not msg.get("more_body"):
            return raw


def build_app(llama: Any = None, st: Any = None) -> Any:
    """``llama``: a ``DirectLlama``; ``st``: a ``DirectST`` (its engine thread runs ``encode``)."""

    async def chat(req: dict[str, Any], send: Any) -> None:
        toks = await asyncio.to_thread(llama._tokens, req["messages"][-1]["content"])
        base = {"id": "bare", "object": "chat.completion.chunk", "created": int(time.time()), "model": req["model"]}
        stream = bool(req.get("stream"))
        if stream:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        text: list[str] = []
        async for ev in llama.events(toks, req["max_tokens"]):
            if ev.error is not None:
                raise RuntimeError(ev.error)
            if ev.text and stream:
                chunk = {**base, "choices": [{"index": 0, "delta": {"content": ev.text}, "finish_reason": None}]}
                await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n", "more_body": True})
            elif ev.text:
                text.append(ev.text)
        usage = {"prompt_tokens": len(toks), "completion_tokens": ev.completion_tokens,
                 "total_tokens": len(toks) + ev.completion_tokens}
        if stream:
            last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": ev.finish_reason}], "usage": usage}
            await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(last) + b"\n\ndata: [DONE]\n\n"})
            return
        body = {**base, "object": "chat.completion", "usage": usage, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "".join(text)}, "finish_reason": ev.finish_reason}]}
        await send({"type": "http.response.start", "status": 200, "headers": _JSON})
        await send({"type": "http.response.body", "body": orjson.dumps(body)})

    async def embed(req: dict[str, Any], send: Any) -> None:
        inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
        vecs = await asyncio.get_running_loop().run_in_executor(st.pool, st.encode, inputs)
        data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()}
                for i, v in enumerate(vecs)]
        body = {"object": "list", "model": req["model"], "data": data, "usage": {"prompt_tokens": 0, "total_tokens": 0}}
        await send({"type": "http.response.start", "status": 200, "headers": _JSON})
        await send({"type": "http.response.body", "body": orjson.dumps(body)})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["method"] == "GET":  # readiness
            await send({"type": "http.response.start", "status": 200, "headers": _JSON})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        req = orjson.loads(await read_body(receive))
        await (chat if scope["path"] == "/v1/chat/completions" else embed)(req, send)

    return app


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--llama", help="GGUF path")
    ap.add_argument("--st", help="sentence-transformers model directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-parallel", type=int, default=8)
    ap.add_argument("--n-ctx", type=int, default=2048)
    a = ap.parse_args()
    llama = st = None
    if a.llama:
        from .direct import DirectLlama

        llama = DirectLlama(a.llama, a.n_parallel, a.threads, a.n_ctx)
    if a.st:
        from .direct import DirectST

        st = DirectST(a.st, a.threads)
    from gpt_server.web.serve import bind_socket, make_server, run_async

    sock = bind_socket("127.0.0.1", a.port)
    try:
        run_async(make_server(build_app(llama, st), sock).serve(sockets=[sock]))
    finally:
        for engine in (llama, st):
            if engine is not None:
                engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
