"""`gpt-server serve` with no config file serves the packaged models (the README's first command)."""

from __future__ import annotations

import time

import httpx
import openai

from tests.helpers import Proc, free_port


def test_builtin_default_serves_chat_and_embeddings() -> None:
    port, cport = free_port(), free_port()
    proc = Proc(["serve", "--port", str(port), "--controller-port", str(cport)], "default_serve", env={"GPT_SERVER_CONFIG": ""})
    try:
        deadline = time.monotonic() + 240
        ids: set[str] = set()
        while time.monotonic() < deadline:
            assert proc.alive(), proc.log_text()
            try:
                ids = {m["id"] for m in httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()["data"]}
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            if {"smollm2-135m-instruct", "all-minilm-l6-v2"} <= ids:
                break
            time.sleep(0.5)
        assert {"gpt-3.5-turbo", "text-embedding-3-small"} <= ids, proc.log_text()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
        r = client.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hi!"}], max_tokens=8)
        assert r.choices[0].message.content
        e = client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
        assert len(e.data) == 2 and len(e.data[0].embedding) == 384
        assert "GPT Server ready on" in proc.log_text()
    finally:
        assert proc.stop() == 0
