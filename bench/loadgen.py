"""The async load generator: closed-loop virtual users over one pooled aiohttp session.

A *target* turns request number ``i`` into a ``Sample`` (the request timed from the
client side). ``run_round`` keeps ``concurrency`` requests in flight until ``requests``
are done and returns every sample with the round's wall time and the client's CPU time
(so a report can show the client was not the bottleneck).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from .metrics import Sample
from .prompts import chat_prompt, embed_inputs

__all__ = ["RoundSpec", "HttpTarget", "run_round"]

SECRET_HEADER = "X-GPT-Server-Secret"


@dataclass
class RoundSpec:
    concurrency: int
    requests: int
    stream: bool = True
    max_tokens: int = 64
    items: int = 1  # embedding inputs per request
    temperature: float = 0.0  # chat: 0 is greedy; above it, sampling over the whole vocabulary (top_p 1)
    timeout_s: float = 300.0
    # the index of the round's first request: a request's prompt (and inputs) follow from its index, so
    # successive rounds starting where the last one ended go through the whole prompt set however short
    first: int = 0


Target = Callable[[int, RoundSpec], Awaitable[Sample]]


_STALE_RETRIES = 8


class _Timer:
    """Records content-event arrival times for one request."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.events: list[float] = []

    def restart(self) -> None:
        self.t0 = time.perf_counter()

    def content(self) -> None:
        self.events.append(time.perf_counter() - self.t0)

    def sample(self, tokens: int | None, stream: bool) -> Sample:
        e2e = time.perf_counter() - self.t0
        ev = self.events
        ttft = ev[0] if stream and ev else None
        itl = [b - a for a, b in zip(ev, ev[1:], strict=False)] if stream else []
        return Sample(ok=True, e2e=e2e, ttft=ttft, tokens=tokens if tokens is not None else len(ev), itl=itl)


class HttpTarget:
    """One HTTP endpoint kind: ``openai_chat``, ``openai_embed`` or ``worker_generate``."""

    def __init__(self, kind: str, base_url: str, model: str, api_key: str | None = None) -> None:
        if kind not in ("openai_chat", "openai_embed", "worker_generate"):
            raise ValueError(f"unknown HTTP target kind '{kind}'")
        self.kind, self.base, self.model = kind, base_url.rstrip("/"), model
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        if kind == "worker_generate" and os.environ.get("GPT_SERVER_SECRET"):
            self.headers[SECRET_HEADER] = os.environ["GPT_SERVER_SECRET"]
        self.session: aiohttp.ClientSession | None = None

    async def open(self, concurrency: int, timeout_s: float) -> None:
        conn = aiohttp.TCPConnector(limit=max(concurrency, 1), keepalive_timeout=60, ttl_dns_cache=None)
        self.session = aiohttp.ClientSession(
            connector=conn, timeout=aiohttp.ClientTimeout(total=timeout_s), json_serialize=lambda o: orjson.dumps(o).decode()
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def __call__(self, i: int, spec: RoundSpec) -> Sample:
        try:
            if self.kind == "openai_chat":
                return await self._chat(i, spec)
            if self.kind == "openai_embed":
                return await self._embed(i, spec)
            return await self._worker(i, spec)
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as exc:
            return Sample(ok=False, e2e=0.0, error=f"{type(exc).__name__}: {exc}"[:300])

    async def _post(self, path: str, body: dict[str, Any], timer: _Timer | None = None) -> aiohttp.ClientResponse:
        assert self.session is not None
        data = orjson.dumps(body)
        for attempt in range(_STALE_RETRIES + 1):
            try:
                resp = await self.session.post(self.base + path, data=data, headers=self.headers)
                break
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                # the server closed a kept-alive connection as the request went out (llama-server's
                # cpp-httplib ends a connection after a few requests); the request never reached
                # it, so send it again (the pool may hold several such), timed from the new start
                if attempt == _STALE_RETRIES:
                    raise
                if timer is not None:
                    timer.restart()
        if resp.status != 200:
            text = (await resp.read())[:300].decode(errors="replace")
            resp.release()
            raise ValueError(f"HTTP {resp.status}: {text}")
        return resp

    async def _chat(self, i: int, spec: RoundSpec) -> Sample:
        body: dict[str, Any] = {
            "model": self.model, "messages": [{"role": "user", "content": chat_prompt(i)}],
            "max_tokens": spec.max_tokens, "temperature": spec.temperature, "stream": spec.stream,
        }
        if spec.stream:
            body["stream_options"] = {"include_usage": True}
        timer = _Timer()
        resp = await self._post("/v1/chat/completions", body, timer)
        async with resp:
            if not spec.stream:
                data = orjson.loads(await resp.read())
                return timer.sample(data["usage"]["completion_tokens"], False)
            tokens, finished = None, False
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                chunk = orjson.loads(payload)
                if chunk.get("error"):
                    raise ValueError(str(chunk["error"])[:300])
                for ch in chunk.get("choices") or ():
                    if (ch.get("delta") or {}).get("content"):
                        timer.content()
                    finished = finished or bool(ch.get("finish_reason"))
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        if not finished:
            raise ValueError("stream ended without a finish_reason (truncated)")
        return timer.sample(tokens, True)

    async def _worker(self, i: int, spec: RoundSpec) -> Sample:
        body = {
            "request_id": uuid.uuid4().hex, "model": self.model, "kind": "chat",
            "messages": [{"role": "user", "content": chat_prompt(i)}],
            "params": {"max_tokens": spec.max_tokens, "temperature": spec.temperature},
        }
        timer = _Timer()
        resp = await self._post("/worker/generate", body)
        tokens = None
        async with resp:
            lines = resp.content if spec.stream else (await resp.read()).splitlines()
            async for line in _aiter(lines):
                ev = orjson.loads(line)
                t = ev.get("t")
                if t == "delta" and ev.get("text"):
                    timer.content()
                elif t == "usage":
                    tokens = ev["completion_tokens"]
                elif t == "error":
                    raise ValueError(ev.get("message", "worker error"))
        return timer.sample(tokens, spec.stream)

    async def _embed(self, i: int, spec: RoundSpec) -> Sample:
        body = {"model": self.model, "input": embed_inputs(i, spec.items), "encoding_format": "base64"}
        timer = _Timer()
        resp = await self._post("/v1/embeddings", body)
        async with resp:
            data = orjson.loads(await resp.read())
        if len(data["data"]) != spec.items:
            raise ValueError(f"expected {spec.items} embeddings, got {len(data['data'])}")
        return timer.sample(spec.items, False)


async def _aiter(lines: Any) -> Any:
    if hasattr(lines, "__aiter__"):
        async for line in lines:
            if line.strip():
                yield line
    else:
        for line in lines:
            if line.strip():
                yield line


async def run_round(target: Target, spec: RoundSpec) -> tuple[list[Sample], float, float]:
    """Closed loop: ``concurrency`` users, ``requests`` in all. Returns samples, wall s, client CPU s."""
    counter = iter(range(spec.first, spec.first + spec.requests))
    samples: list[Sample] = []

    async def user() -> None:
        for i in counter:
            samples.append(await target(i, spec))

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(user() for _ in range(spec.concurrency)))
    return samples, time.perf_counter() - t0, time.process_time() - cpu0
