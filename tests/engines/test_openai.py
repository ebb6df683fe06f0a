"""work_mode: openai — relaying to an OpenAI-compatible upstream: ``python -m llama_cpp.server``
on the packaged SmolLM2 GGUF, started beside GPT Server on loopback (one for chat, one with
``--embedding`` for embeddings), and a second GPT Server for rerank. Upstream failures (down, bad key, context overflow) are
covered in tests/integration/test_relay_openai.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np

from tests.contract.chat import ChatSuite
from tests.contract.embed import EmbedSuite
from tests.contract.rerank import RerankSuite
from tests.embed_helpers import build_cross_encoder, cross_encoder_scores, entry
from tests.helpers import base_config, served
from tests.relay_helpers import LlamaCppServer

RERANK_KEY_ENV = "GPT_SERVER_TEST_RERANK_UPSTREAM_KEY"


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


class TestOpenAIRelayRerank(RerankSuite):
    """A remote upstream's ``/rerank`` (Jina/Cohere shape, as vLLM, SGLang and GPT Server serve
    it): the upstream is a second GPT Server serving a tiny cross-encoder with
    sentence-transformers; the scores must be that model's."""

    model_dir: ClassVar[Path]

    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        cls.model_dir = build_cross_encoder(tmp / "ce")
        upstream_models = [entry("upstream-ce", str(cls.model_dir), "rerank")]
        with served(base_config(api_keys="up-key", models=upstream_models), tmp, "contract_openai_upstream_rerank") as up:
            os.environ[RERANK_KEY_ENV] = "up-key"
            mc = {"model_name_or_path": "upstream-ce", "api_base": f"{up.base_url}/v1", "api_key_env": RERANK_KEY_ENV,
                  "api_flavor": "gpt_server", "upstream_timeout": 60}
            try:
                yield [{cls.model: {"model_config": mc, "model_type": "rerank", "work_mode": "openai",
                                    "workers": [{"gpus": []}]}}]
            finally:
                os.environ.pop(RERANK_KEY_ENV, None)

    def reference(self, query: str, documents: list[str]) -> list[float]:
        return cross_encoder_scores(self.model_dir, query, documents)
