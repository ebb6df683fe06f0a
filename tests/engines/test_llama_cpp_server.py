"""work_mode: llama_cpp_server — the managed engine-server path (the code vLLM, SGLang,
LMDeploy and TRT-LLM share): the worker starts ``python -m llama_cpp.server`` on the packaged
SmolLM2 GGUF as its child and relays to it. Start-up, crash-restart and stop of the engine
process are covered in tests/integration/test_relay_engine.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tests.contract.chat import ChatSuite
from tests.contract.embed import EmbedSuite
from tests.helpers import MODEL_PATH

MEAN_POOLING = ["--kv_overrides", "llama.pooling_type=int:1"]  # the GGUF declares no pooling


def engine_entry(name: str, kind: str, **extra: Any) -> dict[str, Any]:
    mc = {"model_name_or_path": MODEL_PATH, "n_threads": 1, "startup_timeout": 120, **extra}
    return {name: {"model_config": mc, "model_type": kind, "work_mode": "llama_cpp_server", "device": "cpu",
                   "workers": [{"gpus": []}]}}


class TestLlamaCppServerChat(ChatSuite):
    skips: ClassVar[dict[str, str]] = {
        "test_concurrent_streams_progress_together": "llama_cpp.server decodes one request at a time",
        "test_usage_counts_prompt_and_completion": "the relay streams from the engine and llama_cpp.server "
        "sends no usage in a stream, so prompt tokens are not counted (reported 0)",
        "test_completions_prompt_list_times_n": "llama_cpp.server answers a list of prompts with HTTP 500",
        "test_batched_prompts_match_single_requests": "llama_cpp.server answers a list of prompts with HTTP 500",
    }

    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        yield [engine_entry(cls.model, "auto", n_ctx=2048)]


class TestLlamaCppServerEmbed(EmbedSuite):
    dims = 576  # SmolLM2-135M's hidden size, mean-pooled
    atol = 0.05  # llama.cpp's vectors move by up to ~0.03 with the batch a text is decoded in
    batch_atol = 0.05

    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        yield [engine_entry(cls.model, "embedding", n_ctx=512, engine_args=MEAN_POOLING)]

    def reference(self, texts: list[str]) -> np.ndarray:
        """llama-cpp-python in process, the same GGUF and pooling."""
        from llama_cpp import Llama

        from gpt_server.backends.llama_cpp.buffers import default_model_params
        from gpt_server.config import resolve_model_path

        with default_model_params():  # as the engine's server loads it (no AMX buffers on an AMX CPU)
            llm = Llama(resolve_model_path(MODEL_PATH), embedding=True, pooling_type=1, n_ctx=512, n_threads=1, verbose=False)
        return np.array(llm.embed(texts), dtype=np.float32)
