"""fastapi_tritonserver's ``POST /generate`` (an OpenAI front for Triton that many TensorRT-LLM
deployments put up): its request model and the plain conversion onto a one-turn chat.

``{prompt, images, max_output_len, num_beams, repetition_penalty, top_k, top_p, temperature,
uuid}`` → ``{"text": ..., "id": ...}``. As in that front (model types qwen2-chat / qwen-vl), the
prompt is the user's turn and the model's chat template applies; ``images`` are URLs (or
``data:`` URLs) added to that turn. ``text`` is the completion alone. A ``model`` field (ours)
picks the model; without it the default chat model serves. Beam search (``num_beams`` > 1) and
``stream`` are refused with a 400 (fastapi_tritonserver never streamed on this route).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .openai import LIMITS

__all__ = ["TritonGenerateRequest", "generate_chat_body"]

_MAX_IMAGES = 16


class TritonGenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str = Field("", max_length=256)
    prompt: str = Field(min_length=1, max_length=LIMITS.max_text_chars)
    images: list[str] = Field([], max_length=_MAX_IMAGES)
    max_output_len: int | None = Field(None, ge=1, le=LIMITS.max_tokens)
    num_beams: int = Field(1, ge=1, le=64)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    top_k: int | None = Field(None, ge=-1, le=100_000)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    random_seed: int | None = Field(None, ge=0, le=2**64 - 1)
    stream: bool = False
    uuid: str | None = Field(None, max_length=256)
    only_return_output: bool = True


def generate_chat_body(req: TritonGenerateRequest, model: str) -> dict[str, Any]:
    """The ``ChatCompletionRequest`` body of a /generate request."""
    content: str | list[dict[str, Any]] = req.prompt
    if req.images:
        content = [{"type": "image_url", "image_url": {"url": u}} for u in req.images] + [{"type": "text", "text": req.prompt}]
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    for ours, theirs in (("max_tokens", req.max_output_len), ("repetition_penalty", req.repetition_penalty),
                         ("top_k", req.top_k), ("top_p", req.top_p), ("temperature", req.temperature),
                         ("seed", req.random_seed)):
        if theirs is not None:
            body[ours] = theirs
    return body
