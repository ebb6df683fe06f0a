"""work_mode: openai — relaying to an OpenAI-compatible upstream: ``python -m llama_cpp.server``
on the packaged SmolLM2 GGUF, started beside GPT Server on loopback (one for chat, one with
``--embedding`` for embeddings). Upstream failures (down, bad key, context overflow) are
covered in tests/integration/test_relay_openai.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np

from tests.contract.chat import ChatSuite
from tests.contract.embed import EmbedSuite
from tests.relay_helpers import LlamaCppServer


def relay_entry(name: str, api_base: str, kind: str) -> dict[str, Any]:
    mc = {"model_name_or_path": "smol-upstream", "api_base": api_base, "upstream_timeout": 120}
    return {name: {"model_config": mc, "model_type": kind, "work_mode": "openai", "workers": [{"gpus": []}]}}


class TestOpenAIRelayChat(ChatSuite):
    skips: ClassVar[dict[str, str]] = {
        "test_concurrent_streams_progress_together": "llama_cpp.server decodes one request at a time",
        "test_usage_counts_prompt_and_completion": "the relay streams from the upstream and llama_cpp.server "
        "sends no usage in a stream, so prompt tokens are not counted (reported 0)",
        "test_completions_prompt_list_times_n": "llama_cpp.server answers a list of prompts with HTTP 500 "
        "(the relay forwards prompts as sent)",
        "test_batched_prompts_match_single_requests": "llama_cpp.server answers a list of prompts with HTTP 500",
    }

    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        upstream = LlamaCppServer("contract_openai_upstream_chat", n_ctx=2048)
        try:
            upstream.start()
            yield [relay_entry(cls.model, upstream.base_url, "auto")]
        finally:
            upstream.stop()


class TestOpenAIRelayEmbed(EmbedSuite):
    dims = 576  # SmolLM2-135M's hidden size, mean-pooled by llama.cpp
    batch_atol = 0.05  # llama.cpp's vectors move by up to ~0.03 with the batch a text is decoded in
    upstream: ClassVar[LlamaCppServer]

    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        cls.upstream = LlamaCppServer(
            "contract_openai_upstream_embed", n_ctx=512,
            extra=["--embedding", "true", "--kv_overrides", "llama.pooling_type=int:1"],  # mean pooling
        )
        try:
            cls.upstream.start()
            yield [relay_entry(cls.model, cls.upstream.base_url, "embedding")]
        finally:
            cls.upstream.stop()

    def reference(self, texts: list[str]) -> np.ndarray:
        """The upstream asked directly."""
        r = httpx.post(f"{self.upstream.base_url}/embeddings", json={"model": "x", "input": texts}, timeout=120).json()
        return np.array([d["embedding"] for d in sorted(r["data"], key=lambda d: d["index"])], dtype=np.float32)
