"""Options of the relay engines: remote upstreams and engine servers on loopback."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ..options import (
    ChatOptions,
    DTypeOptions,
    EngineProcessOptions,
    EngineTuningOptions,
    LoraOptions,
    MediaOptions,
    ParallelOptions,
    ThreadOptions,
    TrustOptions,
)

__all__ = ["Flavor", "RelayOptions", "UpstreamOptions", "EngineServerOptions"]

# the API an upstream speaks beyond OpenAI's: how regex/choice/grammar output and rerank travel,
# and whether it enforces tool_choice required/named itself (backends/relay/translate.py)
Flavor = Literal["openai", "vllm", "vllm_guided", "sglang", "lmdeploy", "trtllm", "llama_cpp", "tei", "gpt_server"]


class RelayOptions(ChatOptions, MediaOptions, ParallelOptions):
    """Image URLs are fetched here, under the media options, and relayed inline as data: URLs."""

    upstream_timeout: float | None = Field(
        None, gt=0, le=86_400, description="seconds the upstream may stay silent during a request (default 600)"
    )


class UpstreamOptions(RelayOptions):
    api_base: str | None = Field(None, max_length=2048, description="base URL of the OpenAI-compatible upstream")
    api_key_env: str | None = Field(None, max_length=256, description="environment variable holding the upstream's API key")
    lora_adapters: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None,
        max_length=64,
        description="LoRA adapters the upstream serves under their own model ids (a vLLM with --lora-modules, "
        "a GPT Server with lora): each is a model id here too, its parent this entry",
    )
    api_flavor: Flavor = Field(
        "openai",
        description="the server behind api_base, for what OpenAI's API lacks: 'vllm' (structured_outputs), "
        "'vllm_guided' (vLLM < 0.11 and other guided_* servers), 'gpt_server', 'sglang', 'lmdeploy', 'llama_cpp', "
        "'tei' (Text Embeddings Inference's /rerank); 'openai' refuses guided_regex/choice/grammar with 400",
    )


class EngineServerOptions(
    RelayOptions, EngineProcessOptions, DTypeOptions, LoraOptions, ThreadOptions, TrustOptions, EngineTuningOptions
):
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="share of GPU memory the engine may take")
    enable_prefix_caching: bool | None = Field(None, description="the engine's prefix cache on/off (default: the engine's)")
    n_batch: int | None = Field(None, ge=16, le=65536, description="llama_cpp_server: most tokens per step")
    n_gpu_layers: int | None = Field(None, ge=-1, description="llama_cpp_server: layers offloaded to the GPU")
    repack: bool | None = Field(
        None, description="llama_cpp_server: llama.cpp's extra weight buffers (default: on, off on CPUs with AMX)"
    )
    startup_timeout: float | None = Field(
        None, ge=1, le=86_400, description="seconds to wait for the engine's health endpoint (default 900)"
    )
    engine_port: int | None = Field(
        None, ge=1, le=65535, description="loopback port of the engine server (default: a free port)"
    )
    engine_env: dict[str, str] | None = Field(None, description="extra environment variables for the engine process")
    runtime_lora: bool | None = Field(
        None,
        description="vllm: LoRA adapters may be loaded and unloaded while it runs (POST /admin/models/<name>/adapters); "
        "starts vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING (its endpoints stay on loopback, "
        "behind the engine's per-start key). Other engines refuse it",
    )
    max_loras: int | None = Field(None, ge=1, le=256, description="vllm: LoRA adapters in one batch (--max-loras)")
    max_lora_rank: int | None = Field(
        None, ge=1, le=1024, description="vllm: the largest LoRA rank it accepts (--max-lora-rank; vLLM's default 16)"
    )
