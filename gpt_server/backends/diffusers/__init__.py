"""Image generation and editing with diffusers pipelines (``work_mode: diffusers``)."""

from __future__ import annotations

from pydantic import Field

from ..options import DTypeOptions, ThreadOptions
from ..registry import Engine

__all__ = ["DiffusersOptions", "ENGINES"]


class DiffusersOptions(DTypeOptions, ThreadOptions):
    max_n: int | None = Field(None, ge=1, le=64, description="most images per request (default 4)")
    image_min_size: int | None = Field(
        None, ge=8, le=16384, description="smallest width/height accepted, in pixels (default 64)"
    )
    image_max_size: int | None = Field(
        None, ge=8, le=16384, description="largest width/height accepted, in pixels (default 1024)"
    )
    default_image_size: str | None = Field(
        None, pattern=r"^[0-9]{1,5}x[0-9]{1,5}$",
        description="size used when a request gives none or 'auto' (default: the model's native size)",
    )
    num_inference_steps: int | None = Field(
        None, ge=1, le=1000, description="denoising steps at quality 'auto'/'medium' (default 30)"
    )
    max_inference_steps: int | None = Field(
        None, ge=1, le=1000, description="most steps a request may ask for (default 100)"
    )
    guidance_scale: float | None = Field(
        None, ge=0, le=50, description="classifier-free guidance scale (default: the pipeline's)"
    )


ENGINES = (
    Engine(
        name="diffusers",
        backend="gpt_server.backends.diffusers.backend:DiffusersBackend",
        options=DiffusersOptions,
        kinds=frozenset({"image"}),
        description="diffusers pipelines: generations, edits, variations",
    ),
)
