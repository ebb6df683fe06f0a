"""work_mode: openai — relaying to an external OpenAI-compatible server (llama.cpp's own).

The upstream is ``python -m llama_cpp.server`` on the packaged SmolLM2 GGUF, started
outside GPT Server with an API key; GPT Server reaches it through ``api_base`` and
``api_key_env``. Clients use the official openai SDK against GPT Server only.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest

from gpt_server.backends.base import BackendSpec
from gpt_server.backends.relay.backend import OpenAIRelayBackend
from gpt_server.config import parse_config
from gpt_server.protocol.rerank import RERANK, RerankPayload
from tests.helpers import Server, base_config, free_port, served
from tests.relay_helpers import LlamaCppServer

KEY_ENV = "GPT_SERVER_TEST_UPSTREAM_KEY"
BAD_KEY_ENV = "GPT_SERVER_TEST_BAD_UPSTREAM_KEY"
UPSTREAM_KEY = "upstream-secret"
MSG = [{"role": "user", "content": "Name three colors."}]
LONG = [{"role": "user", "content": "hello world " * 400}]


def relay_entry(name: str, api_base: str, *, key_env: str | None = KEY_ENV, kind: str = "auto") -> dict:
    mc: dict = {"model_name_or_path": "smol-upstream", "api_base": api_base, "upstream_timeout": 60}
    if key_env:
        mc["api_key_env"] = key_env
    return {name: {"model_config": mc, "model_type": kind, "work_mode": "openai", "workers": [{"gpus": []}]}}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[LlamaCppServer, LlamaCppServer]]:
    chat = LlamaCppServer("relay_upstream_chat", n_ctx=512, api_key=UPSTREAM_KEY)
    embed = LlamaCppServer("relay_upstream_embed", n_ctx=512, api_key=UPSTREAM_KEY, extra=["--embedding", "true", "--kv_overrides", "llama.pooling_type=int:1"])  # mean pooling
    try:
        chat.start()
        embed.start()
        yield chat, embed
    finally:
        chat.stop()
        embed.stop()


@pytest.fixture(scope="module")
def server(upstreams: tuple[LlamaCppServer, LlamaCppServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    chat, embed = upstreams
    os.environ[KEY_ENV] = UPSTREAM_KEY
    os.environ[BAD_KEY_ENV] = "wrong-key"
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    models = [
        relay_entry("remote", chat.base_url),
        relay_entry("remote-down", dead),
        relay_entry("remote-badkey", chat.base_url, key_env=BAD_KEY_ENV),
        relay_entry("remote-embed", embed.base_url, kind="embedding"),
    ]
    tmp: Path = tmp_path_factory.mktemp("relay_openai")
    try:
        with served(base_config(api_keys="k1", models=models), tmp, "relay_openai", 4, timeout=120) as srv:
            yield srv
    finally:
        os.environ.pop(KEY_ENV, None)
        os.environ.pop(BAD_KEY_ENV, None)


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k1", max_retries=0, timeout=120)


def test_chat_non_stream(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="remote", messages=MSG, max_tokens=20, temperature=0)
    c = r.choices[0]
    assert r.model == "remote" and c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content.strip()
    assert c.finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.completion_tokens > 0


def test_chat_stream_matches_and_is_not_buffered(client: openai.OpenAI) -> None:
    kw = dict(model="remote", messages=MSG, max_tokens=24, temperature=0, seed=1)
    full = client.chat.completions.create(**kw).choices[0].message.content
    stream = client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    parts, stamps, finish, usage = [], [], None, None
    for ch in stream:
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            if c.delta.content:
                parts.append(c.delta.content)
                stamps.append(time.monotonic())
            if c.finish_reason:
                finish = c.finish_reason
    assert "".join(parts) == full
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens >= len(parts) > 3
    assert stamps[-1] - stamps[0] > 0.01  # deltas arrive one by one, not in one buffered burst


def test_completions_stream_and_not(client: openai.OpenAI) -> None:
    r = client.completions.create(model="remote", prompt="The sky is", max_tokens=8, temperature=0)
    assert r.choices[0].text and r.model == "remote"
    texts = [c.choices[0].text for c in client.completions.create(
        model="remote", prompt="The sky is", max_tokens=8, temperature=0, stream=True) if c.choices]
    assert "".join(texts) == r.choices[0].text


def test_over_long_prompt_is_400(client: openai.OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as ei:
            r = client.chat.completions.create(model="remote", messages=LONG, max_tokens=10, stream=stream)
            if stream:
                list(r)
        assert ei.value.status_code == 400
        body = ei.value.body if isinstance(ei.value.body, dict) else {}
        assert "context" in str(ei.value.message).lower()
        assert body.get("code") == "context_length_exceeded"


def test_upstream_down_is_503_not_500(client: openai.OpenAI, server: Server) -> None:
    with pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(model="remote-down", messages=MSG, max_tokens=5)
    assert ei.value.status_code in (502, 503)
    r = httpx.post(f"{server.base_url}/v1/chat/completions", headers={"Authorization": "Bearer k1"},
                   json={"model": "remote-down", "messages": MSG, "stream": True}, timeout=60)
    assert r.status_code in (502, 503) and r.json()["error"]["message"]


def test_wrong_upstream_key_is_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as ei:
        client.chat.completions.create(model="remote-badkey", messages=MSG, max_tokens=5)
    assert ei.value.status_code == 502
    assert "credentials" in ei.value.message


def test_embeddings_relay_equal_upstream(client: openai.OpenAI, upstreams: tuple[LlamaCppServer, LlamaCppServer]) -> None:
    _, embed = upstreams
    texts = ["a red apple", "a green field"]
    ours = client.embeddings.create(model="remote-embed", input=texts, encoding_format="float")
    assert ours.model == "remote-embed" and len(ours.data) == 2
    direct = httpx.post(f"{embed.base_url}/embeddings", headers={"Authorization": f"Bearer {UPSTREAM_KEY}"},
                        json={"model": "x", "input": texts}, timeout=60).json()
    for got, want in zip(ours.data, direct["data"], strict=True):
        assert len(got.embedding) == len(want["embedding"]) > 100
        assert max(abs(a - b) for a, b in zip(got.embedding, want["embedding"], strict=True)) < 1e-5
    with pytest.raises(openai.BadRequestError):  # an embedding model does not chat
        client.chat.completions.create(model="remote-embed", messages=MSG)
    with pytest.raises(openai.BadRequestError) as ei:  # images are not relayed (yet): a 400, never a 500
        client.embeddings.create(model="remote-embed", input=["a", {"image": "aGVsbG8="}])  # type: ignore[list-item]
    assert ei.value.body["param"] == "input" and ei.value.body["code"] == "unsupported_input"


def test_tei_rerank_translation() -> None:
    """``api_flavor: tei``: /v1/rerank becomes TEI's ``POST /rerank {query, texts}`` at the
    upstream's root; its ``[{index, score}]`` come back in our order, with ``top_n`` and the
    documents applied here (a stand-in TEI on loopback: no TEI build installs here)."""
    seen: list[tuple[str, dict]] = []

    class Tei(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append((self.path, body))
            data = json.dumps([{"index": i, "score": 1.0 / (1 + len(t))} for i, t in enumerate(body["texts"])][::-1]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            return None

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Tei)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        model = relay_entry("tei", f"http://127.0.0.1:{srv.server_address[1]}/v1", key_env=None, kind="rerank")
        model["tei"]["model_config"]["api_flavor"] = "tei"
        entry = parse_config({"models": [model]}).models[0]
        backend = OpenAIRelayBackend(BackendSpec(entry=entry, model_path="smol-upstream"))
        backend.load()
        docs = ["a much longer document", "short", "mid size"]
        payload = RerankPayload(query="q", documents=docs, top_n=2, return_documents=True)
        out = asyncio.run(backend.invoke(RERANK, payload))
        backend.close()
    finally:
        srv.shutdown()
    assert seen == [("/rerank", {"query": "q", "texts": docs})]
    assert [(r["index"], r["document"]["text"]) for r in out["results"]] == [(1, "short"), (2, "mid size")]
    assert out["results"][0]["relevance_score"] == pytest.approx(1 / 6)
