"""Triton Inference Server as an engine: an OpenAI front for an existing tritonserver serving a
TensorRT-LLM ``ensemble`` (or any model with its tensor interface), over Triton's HTTP
``generate_stream`` extension. Chat templates, token counts, stop strings and tool parsing run
here, on the model's tokenizer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..options import ChatOptions, MediaOptions, ParallelOptions
from ..registry import Engine

__all__ = ["TritonOptions", "ENGINES", "TENSOR_ROLES"]

# what each tensor of the TensorRT-LLM ensemble means to us; ``tensor_names`` renames them
TENSOR_ROLES = (
    "text_input", "max_tokens", "stream", "temperature", "top_k", "top_p", "repetition_penalty",
    "presence_penalty", "frequency_penalty", "beam_width", "end_id", "pad_id", "stop_words", "bad_words",
    "random_seed", "return_log_probs", "image_input", "text_output", "output_log_probs", "cum_log_probs",
)


class TritonOptions(ChatOptions, MediaOptions, ParallelOptions):
    """``model_name_or_path`` (or ``tokenizer_path``) names the tokenizer: a Hugging Face tokenizer
    directory or a GGUF file; generation runs on the Triton server at ``server_url``."""

    server_url: str = Field(
        max_length=2048, description="Triton's HTTP endpoint, e.g. http://localhost:8000 (a bare host:port means http://)"
    )
    triton_model: str = Field(
        "ensemble", min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.\-]+$",
        description="the Triton model to call (TensorRT-LLM: ensemble or tensorrt_llm_bls)",
    )
    triton_model_version: str = Field("", max_length=32, pattern=r"^[0-9]*$", description="model version (default: Triton's policy)")
    tokenizer_path: str | None = Field(
        None, max_length=4096, description="Hugging Face tokenizer dir or GGUF file (default: model_name_or_path)"
    )
    preset: Literal["trtllm", "qwen2-chat", "qwen-vl"] = Field(
        "trtllm",
        description="trtllm: the model's own chat template; qwen2-chat: ChatML with <|im_end|>/<|endoftext|> stops; "
        "qwen-vl: Qwen-VL's <img>…</img> prompt with the message images sent in the image_input tensor",
    )
    tensor_names: dict[str, str] = Field(
        {}, max_length=len(TENSOR_ROLES),
        description="rename the ensemble's tensors (role → your model's name; an empty name leaves that input out), "
        "roles: " + ", ".join(TENSOR_ROLES),
    )
    send_end_id: bool = Field(True, description="send the tokenizer's EOS id as end_id (and as pad_id when it has no pad)")
    upstream_timeout: float = Field(600, gt=0, le=86_400, description="seconds Triton may stay silent during a request")
    health_interval: float = Field(2.0, ge=0.1, le=300, description="seconds between checks of Triton's readiness API")

    @field_validator("tensor_names")
    @classmethod
    def _known_roles(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(TENSOR_ROLES))
        if unknown:
            raise ValueError(f"unknown tensor role(s) {unknown}; roles: {', '.join(TENSOR_ROLES)}")
        if any(len(name) > 256 for name in v.values()):
            raise ValueError("tensor names are at most 256 characters")
        return v


ENGINES = (
    Engine(
        name="triton",
        backend="gpt_server.backends.triton.backend:TritonBackend",
        options=TritonOptions,
        kinds=frozenset({"auto"}),
        description="a Triton Inference Server model with TensorRT-LLM's ensemble interface (HTTP generate_stream)",
    ),
)
