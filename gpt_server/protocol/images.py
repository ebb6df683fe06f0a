"""OpenAI images API: wire schemas shared by the gateway route and the diffusers backend.

Generation requests are JSON (``ImageGenerationRequest``); edits and variations arrive as
multipart forms whose text fields are validated with ``ImageEditForm`` / ``ImageVariationForm``.
The worker receives ``ImageJob`` (images base64 inside) and answers ``ImageJobResult``
(always base64); the gateway turns that into the OpenAI response (``b64_json`` or ``url``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .kinds import Kind, declare_capability, declare_kind
from .openai import ModelName, OpenAIBaseModel

__all__ = [
    "IMAGE_LIMITS",
    "OUTPUT_FORMATS",
    "ImageGenerationRequest",
    "ImageEditForm",
    "ImageVariationForm",
    "ImageJob",
    "IMAGE",
    "IMAGE_EDIT",
    "IMAGE_VARIATION",
    "ImageJobResult",
    "GeneratedImage",
    "parse_size",
]


class _ImageLimits:
    max_n = 10  # OpenAI's bound; a model's max_n may lower it
    max_prompt_chars = 32_000
    max_steps = 1000  # the request extension's hard bound; the model's max_inference_steps applies too
    max_upload_bytes = 50 * 1024 * 1024  # per image file (OpenAI: 50 MB for gpt-image, 4 MB for dall-e-2)
    max_images = 16  # images[] in one edit request
    max_form_fields = 32


IMAGE_LIMITS = _ImageLimits()

OUTPUT_FORMATS: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

_SIZE_RE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")

Quality = Literal["auto", "low", "medium", "high", "standard", "hd"]
ResponseFormat = Literal["url", "b64_json"]
OutputFormat = Literal["png", "jpeg", "webp"]


def parse_size(size: str | None) -> tuple[int, int] | None:
    """``"WxH"`` → (width, height); None/"auto" → None. Raises ValueError on a malformed size."""
    if size is None or size == "auto":
        return None
    m = _SIZE_RE.match(size)
    if not m:
        raise ValueError("size must look like WIDTHxHEIGHT (for example 512x512) or 'auto'")
    return int(m.group(1)), int(m.group(2))


class _ImageParams(BaseModel):
    """Fields common to generations, edits and variations (OpenAI's plus the extensions)."""

    model: ModelName = ""
    n: int = Field(1, ge=1, le=IMAGE_LIMITS.max_n)
    size: str | None = Field(None, max_length=16)
    response_format: ResponseFormat = Field(
        "b64_json",
        description=(
            "b64_json: the image in the response; url: a link to this server that works without an API key "
            "(the signed link is the credential: share it like the image) until it expires "
            "(serve_args.images_ttl, 1 h by default) or the server restarts"
        ),
    )
    output_format: OutputFormat = "png"
    output_compression: int | None = Field(None, ge=0, le=100)
    quality: Quality = "auto"
    user: str | None = Field(None, max_length=256)
    # extensions
    steps: int | None = Field(None, ge=1, le=IMAGE_LIMITS.max_steps, description="denoising steps (overrides quality)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    negative_prompt: str | None = Field(None, max_length=IMAGE_LIMITS.max_prompt_chars)
    guidance_scale: float | None = Field(None, ge=0, le=50)

    @field_validator("size")
    @classmethod
    def _check_size(cls, v: str | None) -> str | None:
        parse_size(v)
        return v

    @field_validator("quality", "size", "negative_prompt", "response_format", "output_format", mode="before")
    @classmethod
    def _blank_is_default(cls, v: Any, info: Any) -> Any:
        defaults = {"response_format": "b64_json", "output_format": "png", "quality": "auto"}
        return defaults.get(info.field_name) if v is None or v == "" else v


class ImageGenerationRequest(_ImageParams, OpenAIBaseModel):
    """POST /v1/images/generations (JSON)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=(), populate_by_name=True)

    prompt: str = Field(min_length=1, max_length=IMAGE_LIMITS.max_prompt_chars)
    style: str | None = Field(None, max_length=32)
    background: Literal["auto", "opaque", "transparent"] | None = None
    moderation: str | None = Field(None, max_length=32)


class ImageEditForm(_ImageParams):
    """The text fields of POST /v1/images/edits (multipart)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    prompt: str = Field(min_length=1, max_length=IMAGE_LIMITS.max_prompt_chars)
    strength: float | None = Field(None, gt=0, le=1, description="extension: how far image-to-image departs from the input")


class ImageVariationForm(_ImageParams):
    """The text fields of POST /v1/images/variations (multipart)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class ImageJob(BaseModel):
    """What the gateway sends the worker (capability image / image_edit / image_variation)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("", max_length=IMAGE_LIMITS.max_prompt_chars)
    negative_prompt: str | None = Field(None, max_length=IMAGE_LIMITS.max_prompt_chars)
    n: int = Field(1, ge=1, le=IMAGE_LIMITS.max_n)
    size: str | None = Field(None, max_length=16)
    quality: Quality = "auto"
    steps: int | None = Field(None, ge=1, le=IMAGE_LIMITS.max_steps)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    guidance_scale: float | None = Field(None, ge=0, le=50)
    strength: float | None = Field(None, gt=0, le=1)
    output_format: OutputFormat = "png"
    output_compression: int | None = Field(None, ge=0, le=100)
    images_b64: list[str] = Field(default_factory=list, max_length=IMAGE_LIMITS.max_images)
    mask_b64: str | None = None


IMAGE = declare_capability("image", ImageJob, kinds=("image",))
IMAGE_EDIT = declare_capability("image_edit", ImageJob, kinds=("image",))
IMAGE_VARIATION = declare_capability("image_variation", ImageJob, kinds=("image",))
declare_kind(
    Kind(
        name="image",
        label="images",
        default_engine="diffusers",
        description="image generation, edits and variations (/v1/images/*)",
        legacy_names=("flux", "sd", "qwen_image", "qwen_image_edit", "z_image"),  # gpt_server names: diffusers pipelines
    )
)


class GeneratedImage(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ImageJobResult(BaseModel):
    """What the worker answers: base64 images plus the settings actually used."""

    created: int
    data: list[GeneratedImage]
    output_format: OutputFormat
    size: str
    quality: str
    steps: int
    seed: int
    usage: dict[str, Any]
