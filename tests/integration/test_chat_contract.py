"""The chat backend contract: the same behaviour tests run against every chat engine.

Each backend serves the same real model (SmolLM2-135M-Instruct: the packaged GGUF for
llama.cpp, the same weights converted to a Hugging Face directory for transformers)
through a real server, driven by the openai SDK.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import Server, base_config, served, smollm_entry

BACKENDS = ["llama_cpp", "hf"]
MODEL = "chat"
COUNT = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
COLORS = [{"role": "user", "content": "Name three colors."}]


def _entry(work_mode: str) -> dict[str, Any]:
    if work_mode == "llama_cpp":
        return smollm_entry(MODEL, n_threads=1, n_parallel=4)
    from tests.hf_helpers import hf_entry, smollm_hf_dir

    return hf_entry(MODEL, smollm_hf_dir(), n_parallel=4)


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp(f"contract-{request.param}")
    with served(base_config(models=[_entry(request.param)]), tmp, f"contract_{request.param}", 1) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=120)


def _collect(stream: Any) -> tuple[dict[int, str], dict[int, str], Any]:
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    usage = None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    return texts, finishes, usage


def test_non_stream_and_usage(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=COLORS, max_tokens=8, temperature=0)
    c = r.choices[0]
    assert c.message.role == "assistant" and isinstance(c.message.content, str) and c.message.content.strip()
    assert c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if c.finish_reason == "length":
        assert r.usage.completion_tokens == 8


def test_stream_equals_non_stream(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = dict(model=MODEL, messages=COLORS, max_tokens=10, temperature=0)
    full = client.chat.completions.create(**kw)
    texts, finishes, usage = _collect(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    assert texts[0] == full.choices[0].message.content
    assert finishes[0] == full.choices[0].finish_reason
    assert usage.completion_tokens == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens


def test_stop_strings_never_leak(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = dict(model=MODEL, messages=COUNT, max_tokens=12, temperature=0)
    base = client.chat.completions.create(**kw).choices[0].message.content
    assert "3" in base, base
    stop_at = base[base.index("3") :][:2]
    r = client.chat.completions.create(**kw, stop=[stop_at])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == base[: base.index(stop_at)]
    texts, finishes, _ = _collect(client.chat.completions.create(**kw, stop=stop_at, stream=True))
    assert texts[0] == r.choices[0].message.content and finishes[0] == "stop"


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "Write a long story about a dragon."}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    texts, finishes, usage = _collect(
        client.chat.completions.create(
            model=MODEL, messages=msgs, max_completion_tokens=2, stream=True, stream_options={"include_usage": True}
        )
    )
    assert finishes[0] == "length" and usage.completion_tokens == 2


def test_n_distinct_samples(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Invent a name for a cat."}],
        n=3, max_tokens=6, temperature=1.3, seed=7,
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) >= 2
    assert r.usage.completion_tokens >= 3


def test_seed_reproducible(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = dict(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a random fact."}],
        max_tokens=8, temperature=1.0, top_p=0.95, seed=1234, logit_bias={"2": -100},
    )
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    c = client.chat.completions.create(**{**kw, "seed": 99}).choices[0].message.content
    assert a == b
    assert a != c


def test_logprobs_shape(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=COLORS, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3, logit_bias={"2": -100}
    )
    lp = r.choices[0].logprobs
    assert lp is not None and len(lp.content) == 4 == r.usage.completion_tokens
    for entry in lp.content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert abs(entry.logprob - entry.top_logprobs[0].logprob) < 1e-5  # greedy
    assert "".join(e.token for e in lp.content) == r.choices[0].message.content


def test_completions_stream_equals_non_stream(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = dict(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    full = client.completions.create(**kw)
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True) if c.choices)
    assert full.choices[0].text and streamed == full.choices[0].text
    r = client.completions.create(model=MODEL, prompt=["A", "B"], max_tokens=2, n=2, temperature=0.9, seed=3)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert r.usage.completion_tokens == 8 or all(c.finish_reason for c in r.choices)


def test_batched_prompts_match_single_requests(client: openai.OpenAI) -> None:
    """Prompts of different lengths decoded together (padding, masks, positions) give what each gives alone."""
    prompts = ["The capital of France is", "Once upon a time, in a land far far away, there lived a", "1, 2, 3,"]
    kw: dict[str, Any] = dict(model=MODEL, max_tokens=6, temperature=0)
    together = client.completions.create(prompt=prompts, **kw)
    texts = {c.index: c.text for c in together.choices}
    for i, p in enumerate(prompts):
        assert texts[i] == client.completions.create(prompt=p, **kw).choices[0].text, p


def test_concurrent_streams_progress_together(client: openai.OpenAI) -> None:
    first: dict[int, float] = {}
    done: dict[int, float] = {}
    start = time.monotonic()

    def run(i: int) -> None:
        s = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Write a poem number {i}."}], max_tokens=12,
            temperature=0.8, seed=i, stream=True, logit_bias={"2": -100},
        )
        for chunk in s:
            if chunk.choices and chunk.choices[0].delta.content and i not in first:
                first[i] = time.monotonic() - start
        done[i] = time.monotonic() - start

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == 3
    assert max(first.values()) < min(done.values())


def test_client_disconnect_frees_worker_directly(server: Server) -> None:
    """The worker stops generating at once when its caller hangs up mid-stream."""
    w = server.workers()[0]["address"]
    body = {"request_id": "disc", "model": MODEL, "kind": "chat", "messages": [{"role": "user", "content": "Write a long essay."}],
            "params": {"max_tokens": 1500, "logit_bias": {"2": -100}}}
    with httpx.stream("POST", f"{w}/worker/generate", json=body, timeout=60) as r:
        assert r.status_code == 200
        for i, _ in enumerate(r.iter_lines()):
            if i >= 3:
                break
    deadline = time.monotonic() + 5
    while httpx.get(f"{w}/worker/info").json()["inflight"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(f"{w}/worker/info").json()["inflight"] == 0


def test_client_disconnect_frees_worker(server: Server) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long essay."}],
            "max_tokens": 1500, "stream": True, "logit_bias": {"2": -100}}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        got = 0
        for line in r.iter_lines():
            got += line.startswith("data: ")
            if got >= 3:
                break
    deadline = time.monotonic() + 5  # far less than 1500 tokens take on either engine
    infos: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        infos = [httpx.get(f"{w['address']}/worker/info").json() for w in server.workers()]
        if all(i["inflight"] == 0 for i in infos):
            break
        time.sleep(0.2)
    assert infos and all(i["inflight"] == 0 for i in infos), infos
