"""The chat suite (kind ``auto``: chat + completion), run against every chat engine through a
real server and the openai SDK."""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

import httpx
import openai
import pytest

from tests.contract.base import Suite, covers
from tests.helpers import Server
from tests.openai_shapes import assert_openai_shape, sse_payloads

__all__ = ["ChatSuite"]

COUNT = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
COLORS = [{"role": "user", "content": "Name three colors."}]
NO_EOS = {"2": -100}  # SmolLM2's end-of-turn token: generation runs to max_tokens


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


class ChatSuite(Suite):
    """Chat and legacy completions on SmolLM2-135M-Instruct (or whatever the engine serves
    as ``model``; the logit-bias tests assume SmolLM2's vocabulary)."""

    kind = "auto"
    model: ClassVar[str] = "chat"
    long_max_tokens: ClassVar[int] = 1500  # a generation only a hang-up ends (fits the context)

    @covers("chat")
    def test_non_stream_shape(self, client: openai.OpenAI) -> None:
        r = client.chat.completions.create(model=self.model, messages=COLORS, max_tokens=8, temperature=0)
        c = r.choices[0]
        assert r.model == self.model and r.object == "chat.completion"
        assert c.message.role == "assistant" and isinstance(c.message.content, str) and c.message.content.strip()
        assert c.finish_reason in ("stop", "length")
        assert 0 < r.usage.completion_tokens <= 8
        if c.finish_reason == "length":
            assert r.usage.completion_tokens == 8

    @covers("chat", "completion")
    def test_responses_match_the_openai_schema(self, server: Server) -> None:
        """Every chat, completion, model-list and error body, streamed or not, validates against
        OpenAI's published response schemas (no ``null`` where OpenAI omits a key or sends a string)."""
        url, h = server.base_url, server.headers()
        chat = {"model": self.model, "messages": COLORS, "max_tokens": 6, "temperature": 0}
        r = httpx.post(f"{url}/v1/chat/completions", json=chat, headers=h, timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert_openai_shape("CreateChatCompletionResponse", body)
        assert "tool_calls" not in body["choices"][0]["message"]  # OpenAI omits the key without calls
        fingerprint = body["system_fingerprint"]
        assert isinstance(fingerprint, str) and fingerprint.startswith("fp_")
        r = httpx.post(f"{url}/v1/chat/completions", json={**chat, "logprobs": True, "top_logprobs": 2}, headers=h, timeout=120)
        assert_openai_shape("CreateChatCompletionResponse", r.json())
        assert r.json()["system_fingerprint"] == fingerprint  # stable for one model and build
        stream = {**chat, "stream": True, "stream_options": {"include_usage": True}, "logprobs": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=stream, headers=h, timeout=120) as s:
            chunks = sse_payloads(s.read().decode())
        assert len(chunks) >= 3
        for c in chunks:
            assert_openai_shape("CreateChatCompletionStreamResponse", c)
            assert c["system_fingerprint"] == fingerprint
        comp = {"model": self.model, "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0, "logprobs": 2}
        r = httpx.post(f"{url}/v1/completions", json=comp, headers=h, timeout=120)
        assert r.status_code == 200, r.text
        assert_openai_shape("CreateCompletionResponse", r.json())
        with httpx.stream("POST", f"{url}/v1/completions", json={**comp, "stream": True}, headers=h, timeout=120) as s:
            for c in sse_payloads(s.read().decode()):
                for choice in c["choices"]:  # the schema has no stream variant; OpenAI streams null here
                    choice["finish_reason"] = choice["finish_reason"] or "stop"
                assert_openai_shape("CreateCompletionResponse", c)
        models = httpx.get(f"{url}/v1/models", headers=h, timeout=30).json()
        assert_openai_shape("ListModelsResponse", models)
        one = httpx.get(f"{url}/v1/models/{self.model}", headers=h, timeout=30)
        assert one.status_code == 200 and one.json() in models["data"]
        assert_openai_shape("Model", one.json())
        bad = httpx.post(f"{url}/v1/chat/completions", json={**chat, "max_tokens": -1}, headers=h, timeout=30)
        assert bad.status_code == 400
        assert_openai_shape("ErrorResponse", bad.json())

    @covers("chat", "completion")
    def test_usage_counts_prompt_and_completion(self, client: openai.OpenAI) -> None:
        r = client.chat.completions.create(model=self.model, messages=COLORS, max_tokens=4, temperature=0)
        assert r.usage.prompt_tokens > 5 and r.usage.completion_tokens > 0
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        longer = [{"role": "user", "content": "Name three colors, please, and say why you like them."}]
        more = client.chat.completions.create(model=self.model, messages=longer, max_tokens=4, temperature=0)
        assert more.usage.prompt_tokens > r.usage.prompt_tokens
        c = client.completions.create(model=self.model, prompt="The capital of France is", max_tokens=3, temperature=0)
        assert c.usage.prompt_tokens >= 5 and c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens

    @covers("chat")
    def test_stream_equals_non_stream(self, client: openai.OpenAI) -> None:
        kw: dict[str, Any] = dict(model=self.model, messages=COLORS, max_tokens=10, temperature=0)
        full = client.chat.completions.create(**kw)
        texts, finishes, usage = _collect(
            client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
        )
        assert texts[0] == full.choices[0].message.content
        assert finishes[0] == full.choices[0].finish_reason
        assert usage.completion_tokens == full.usage.completion_tokens
        assert usage.prompt_tokens == full.usage.prompt_tokens

    @covers("chat")
    def test_stop_strings_never_leak(self, client: openai.OpenAI) -> None:
        kw: dict[str, Any] = dict(model=self.model, messages=COUNT, max_tokens=12, temperature=0)
        base = client.chat.completions.create(**kw).choices[0].message.content
        assert "3" in base, base
        stop_at = base[base.index("3") :][:2]
        r = client.chat.completions.create(**kw, stop=[stop_at])
        assert r.choices[0].finish_reason == "stop"
        assert r.choices[0].message.content == base[: base.index(stop_at)]
        texts, finishes, _ = _collect(client.chat.completions.create(**kw, stop=stop_at, stream=True))
        assert texts[0] == r.choices[0].message.content and finishes[0] == "stop"

    @covers("chat")
    def test_max_tokens_gives_length(self, client: openai.OpenAI) -> None:
        msgs = [{"role": "user", "content": "Write a long story about a dragon."}]
        r = client.chat.completions.create(model=self.model, messages=msgs, max_tokens=3, temperature=0)
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
        texts, finishes, usage = _collect(
            client.chat.completions.create(
                model=self.model, messages=msgs, max_completion_tokens=2, stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert finishes[0] == "length" and usage.completion_tokens == 2

    @covers("chat")
    def test_n_distinct_samples(self, client: openai.OpenAI) -> None:
        r = client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": "Invent a name for a cat."}],
            n=3, max_tokens=6, temperature=1.3, seed=7,
        )
        assert [c.index for c in r.choices] == [0, 1, 2]
        assert len({c.message.content for c in r.choices}) >= 2
        assert r.usage.completion_tokens >= 3

    @covers("chat")
    def test_seed_reproducible(self, client: openai.OpenAI) -> None:
        kw: dict[str, Any] = dict(
            model=self.model, messages=[{"role": "user", "content": "Tell me a random fact."}],
            max_tokens=8, temperature=1.0, top_p=0.95, seed=1234, logit_bias=NO_EOS,
        )
        a = client.chat.completions.create(**kw).choices[0].message.content
        b = client.chat.completions.create(**kw).choices[0].message.content
        c = client.chat.completions.create(**{**kw, "seed": 99}).choices[0].message.content
        assert a == b
        assert a != c

    @covers("chat")
    def test_logprobs_shape(self, client: openai.OpenAI) -> None:
        r = client.chat.completions.create(
            model=self.model, messages=COLORS, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3,
            logit_bias=NO_EOS,
        )
        lp = r.choices[0].logprobs
        assert lp is not None and len(lp.content) == 4 == r.usage.completion_tokens
        for entry in lp.content:
            assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
            assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
            assert abs(entry.logprob - entry.top_logprobs[0].logprob) < 1e-5  # greedy
        assert "".join(e.token for e in lp.content) == r.choices[0].message.content

    @covers("chat", "completion")
    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"temperature": 2.5}, "temperature"),
            ({"n": 0}, "n"),
            ({"max_tokens": 0}, "max_tokens"),
            ({"top_p": 0}, "top_p"),
            ({"messages": []}, "messages"),
        ],
    )
    def test_out_of_bounds_is_400_with_param(self, server: Server, body: dict[str, Any], param: str) -> None:
        for route, base in (("chat/completions", {"messages": COLORS}), ("completions", {"prompt": "Hi"})):
            if route == "completions" and param == "messages":
                continue
            r = httpx.post(f"{server.base_url}/v1/{route}", json={"model": self.model, **base, **body}, timeout=60)
            assert r.status_code == 400, (route, r.text)
            err = r.json()["error"]
            assert err["param"] == param and err["type"] == "invalid_request_error", (route, err)

    @covers("tokenize", "detokenize")
    def test_tokenize_counts_what_chat_bills_and_round_trips(self, server: Server, client: openai.OpenAI) -> None:
        card = next(m for m in client.models.list().data if m.id == self.model)
        caps = set(getattr(card, "capabilities", None) or [])
        tk = httpx.post(f"{server.base_url}/tokenize", json={"model": self.model, "messages": COLORS}, timeout=60)
        if "tokenize" not in caps:  # an engine without it says so, in the OpenAI shape
            assert tk.status_code == 400 and "does not support tokenize" in tk.json()["error"]["message"], tk.text
            return
        assert tk.status_code == 200, tk.text
        usage = client.chat.completions.create(model=self.model, messages=COLORS, max_tokens=1).usage
        assert tk.json()["count"] == usage.prompt_tokens == len(tk.json()["tokens"])
        text = "Colors: red, green and blue."
        ids = httpx.post(f"{server.base_url}/tokenize", json={"model": self.model, "prompt": text,
                                                              "add_special_tokens": False}, timeout=60).json()["tokens"]
        back = httpx.post(f"{server.base_url}/detokenize", json={"model": self.model, "tokens": ids}, timeout=60)
        assert back.status_code == 200 and back.json()["prompt"] == text, back.text

    @covers("completion")
    def test_completions_stream_equals_non_stream(self, client: openai.OpenAI) -> None:
        kw: dict[str, Any] = dict(model=self.model, prompt="The capital of France is", max_tokens=5, temperature=0)
        full = client.completions.create(**kw)
        assert full.object == "text_completion" and full.usage.completion_tokens > 0
        streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True) if c.choices)
        assert full.choices[0].text and streamed == full.choices[0].text

    @covers("completion")
    def test_completions_prompt_list_times_n(self, client: openai.OpenAI) -> None:
        r = client.completions.create(model=self.model, prompt=["A", "B"], max_tokens=2, n=2, temperature=0.9, seed=3)
        assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
        assert r.usage.completion_tokens == 8 or all(c.finish_reason for c in r.choices)

    @covers("completion")
    def test_batched_prompts_match_single_requests(self, client: openai.OpenAI) -> None:
        """Prompts of different lengths decoded together (padding, masks, positions) give what each gives alone."""
        prompts = ["The capital of France is", "Once upon a time, in a land far far away, there lived a", "1, 2, 3,"]
        kw: dict[str, Any] = dict(model=self.model, max_tokens=6, temperature=0)
        together = client.completions.create(prompt=prompts, **kw)
        texts = {c.index: c.text for c in together.choices}
        for i, p in enumerate(prompts):
            assert texts[i] == client.completions.create(prompt=p, **kw).choices[0].text, p

    @covers("chat")
    def test_concurrent_streams_progress_together(self, client: openai.OpenAI) -> None:
        first: dict[int, float] = {}
        done: dict[int, float] = {}
        start = time.monotonic()

        def run(i: int) -> None:
            s = client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": f"Write a poem number {i}."}], max_tokens=12,
                temperature=0.8, seed=i, stream=True, logit_bias=NO_EOS,
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

    @covers("chat")
    def test_client_disconnect_frees_worker_directly(self, server: Server) -> None:
        """The worker stops generating at once when its caller hangs up mid-stream."""
        w = server.workers()[0]["address"]
        body = {"request_id": "disc", "model": self.model, "kind": "chat",
                "messages": [{"role": "user", "content": "Write a long essay."}],
                "params": {"max_tokens": self.long_max_tokens, "logit_bias": NO_EOS}}
        with httpx.stream("POST", f"{w}/worker/generate", json=body, headers=server.internal_headers(), timeout=60) as r:
            assert r.status_code == 200, r.read()
            for i, _ in enumerate(r.iter_lines()):
                if i >= 3:
                    break
        deadline = time.monotonic() + 5
        while httpx.get(f"{w}/worker/info", headers=server.internal_headers()).json()["inflight"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(f"{w}/worker/info", headers=server.internal_headers()).json()["inflight"] == 0

    @covers("chat")
    def test_client_disconnect_frees_worker(self, server: Server) -> None:
        body = {"model": self.model, "messages": [{"role": "user", "content": "Write a very long essay."}],
                "max_tokens": self.long_max_tokens, "stream": True, "logit_bias": NO_EOS}
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200, r.read()
            got = 0
            for line in r.iter_lines():
                got += line.startswith("data: ")
                if got >= 3:
                    break
        assert got >= 3
        deadline = time.monotonic() + 5  # far less than long_max_tokens take on any engine here
        infos: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            infos = [httpx.get(f"{w['address']}/worker/info", headers=server.internal_headers()).json() for w in server.workers()]
            if all(i["inflight"] == 0 for i in infos):
                break
            time.sleep(0.2)
        assert infos and all(i["inflight"] == 0 for i in infos), infos
