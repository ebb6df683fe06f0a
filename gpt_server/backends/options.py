"""Option groups that several engines share; each engine's ``Options`` combines the ones it honours.

``model_config`` in config.yaml stays one flat mapping. It is validated by the chosen
engine's ``Options`` (a subclass of ``config.ModelConfig``), so a key the engine does not
take is an error that names it, instead of a setting silently ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from ..settings import ModelConfig

if TYPE_CHECKING:
    from ..chat.media import MediaPolicy

__all__ = [
    "ThreadOptions",
    "ParallelOptions",
    "ChatOptions",
    "GrammarOptions",
    "DTypeOptions",
    "LoraOptions",
    "MediaOptions",
    "TextTaskOptions",
    "EngineProcessOptions",
    "TrustOptions",
    "EngineTuningOptions",
]


class ThreadOptions(ModelConfig):
    n_threads: int | None = Field(None, ge=1, le=1024, description="CPU threads for the engine")


class ParallelOptions(ModelConfig):
    n_parallel: int | None = Field(None, ge=1, le=256, description="sequences / requests the engine runs at once")


class DTypeOptions(ModelConfig):
    dtype: str | None = Field(None, max_length=32, description="weight dtype (auto, float16, bfloat16, float32 …)")


class LoraOptions(ModelConfig):
    lora: dict[str, str] | None = Field(None, description="LoRA adapters: served name → adapter path")


class ChatOptions(ModelConfig):
    """The shared chat layer: templates, tool and reasoning parsers, context, n."""

    chat_template: str | None = Field(None, description="Jinja chat template overriding the model's")
    tool_call_parser: str | None = Field(
        None,
        max_length=64,
        description=(
            "tool-call format (default: from the chat template). Local engines: hermes/qwen, llama3_json, mistral, "
            "glm4 (GLM-4.5), glm4_9b (GLM-4-9B/0414), chatglm3, qwen3_coder, deepseek_v3, pythonic, json (bare or "
            "```json-fenced call objects, e.g. Qwen2.5-Coder); relay engines pass the name to the engine"
        ),
    )
    reasoning_parser: str | None = Field(None, max_length=64, description="reasoning format (default: from the chat template)")
    n_ctx: int | None = Field(None, ge=64, le=1_048_576, description="context length per sequence")
    max_model_len: int | None = Field(None, ge=64, le=1_048_576, description="context length (vLLM's name for n_ctx)")
    max_n: int | None = Field(None, ge=1, le=64, description="largest n accepted")


class GrammarOptions(ModelConfig):
    """Structured output compiled in this worker (xgrammar)."""

    grammar_cache_bytes: int = Field(
        64 * 1024 * 1024, ge=0, le=64 * 1024**3,
        description="memory the compiled-grammar cache may hold (least recently used dropped first); 0 = no cache",
    )
    grammar_compile_timeout: float = Field(
        10.0, gt=0, le=600,
        description="seconds a request's grammar may take to compile (one compile at a time per worker); longer is a 400",
    )


class MediaOptions(ModelConfig):
    """Image inputs of chat messages (vision models)."""

    allow_private_media_urls: bool = Field(
        False, description="let image_url fetch private/loopback/link-local addresses (off: public hosts only)"
    )
    max_media_bytes: int | None = Field(
        None, ge=1024, le=512 * 1024 * 1024, description="largest image (data: or fetched) accepted (default 20 MiB)"
    )
    media_fetch_timeout: float | None = Field(
        None, gt=0, le=300,
        description="seconds allowed to fetch one remote image, name lookup, headers, body and redirects included (default 10)",
    )
    max_image_pixels: int | None = Field(
        None, ge=1, le=1_000_000_000,
        description="most pixels of one image, read from its header before decoding (default 24000000)",
    )
    max_request_image_pixels: int | None = Field(
        None, ge=1, le=4_000_000_000,
        description="most pixels of all images of one request together (default 40000000)",
    )
    max_concurrent_media_fetches: int | None = Field(
        None, ge=1, le=256,
        description="remote images fetched at once per worker; more wait, within their deadline (default 8)",
    )

    def media_policy(self) -> MediaPolicy:
        from ..chat.media import MediaPolicy

        d = MediaPolicy()
        return MediaPolicy(
            max_bytes=self.max_media_bytes or d.max_bytes,
            timeout=self.media_fetch_timeout or d.timeout,
            allow_private=self.allow_private_media_urls,
            max_image_pixels=self.max_image_pixels or d.max_image_pixels,
            max_request_pixels=self.max_request_image_pixels or d.max_request_pixels,
            max_concurrent_fetches=self.max_concurrent_media_fetches or d.max_concurrent_fetches,
        )


class TextTaskOptions(ModelConfig):
    """Embeddings, rerank and classification engines."""

    max_batch_size: int | None = Field(
        None, ge=1, le=4096, description="most items run in one forward pass (default 32)"
    )
    batch_wait_ms: float | None = Field(
        None, ge=0, le=1000,
        description="how long a batch waits for more requests under concurrent load (default 3 ms; a lone request runs at once)",
    )
    max_seq_length: int | None = Field(
        None, ge=8, le=1_048_576, description="tokens kept per input (longer inputs are truncated)"
    )
    normalize_embeddings: bool | None = Field(
        None, description="L2-normalise embeddings (default: as the model's own pipeline does)"
    )
    matryoshka_dims: list[int] | None = Field(
        None, max_length=64,
        description="embedding sizes a request's `dimensions` may ask for (truncate + renormalise); none = full size only",
    )
    moderation_threshold: float | None = Field(
        None, ge=0, le=1, description="moderation: a category is flagged at this score or above (default 0.5)"
    )
    moderation_label_map: dict[str, str] | None = Field(
        None, description="moderation: model label → OpenAI category (or 'none' for a benign label), overriding name matching"
    )
    class_labels: list[str] | None = Field(
        None, max_length=1024, description="scikit-learn classifier dirs: label names in the order of the model's classes_"
    )

    @field_validator("matryoshka_dims")
    @classmethod
    def _check_matryoshka_dims(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(d < 1 or d > 65536 for d in v):
            raise ValueError("sizes must be between 1 and 65536")
        return v


class EngineProcessOptions(ModelConfig):
    """Engines run as their own server process, possibly from their own virtualenv."""

    python: str | None = Field(None, description="interpreter of the engine's own environment (default: this one)")
    engine_args: list[str] | None = Field(None, description="extra command-line arguments for the engine, appended last")


class TrustOptions(ModelConfig):
    trust_remote_code: bool = Field(
        False,
        description=(
            "run Python code shipped with the model (custom architectures, tokenizers, pipelines): passed to "
            "transformers / sentence-transformers / diffusers, and as --trust-remote-code to vLLM, SGLang, "
            "TensorRT-LLM and infinity. Off by default: turn it on only for models whose code you trust"
        ),
    )


class EngineTuningOptions(ModelConfig):
    """gpt_server's engine keys, each turned into the engine's own flag or refused by name."""

    enforce_eager: bool | None = Field(
        None, description="no CUDA graphs (vLLM --enforce-eager, SGLang --disable-cuda-graph, LMDeploy pytorch --eager-mode)"
    )
    enable_chunked_prefill: bool | None = Field(
        None, description="chunked prefill on/off (vLLM --[no-]enable-chunked-prefill; SGLang off = --chunked-prefill-size -1)"
    )
    kv_cache_quant_policy: int | None = Field(
        None, ge=0, le=8,
        description="KV-cache quantisation: 0 off, 4 or 8 bits (LMDeploy --quant-policy; vLLM/SGLang: 8 = fp8 KV cache)",
    )
    hf_overrides: dict[str, Any] | None = Field(
        None, description="overrides of the model's config.json (vLLM --hf-overrides, SGLang --json-model-override-args)"
    )

    @field_validator("kv_cache_quant_policy")
    @classmethod
    def _quant_policy(cls, v: int | None) -> int | None:
        if v is not None and v not in (0, 4, 8):
            raise ValueError("must be 0, 4 or 8")
        return v
