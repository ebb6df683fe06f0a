"""Pure planning: an ``ImageJob`` checked against the model's limits → pipeline settings."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from ...errors import BadRequestError
from ...protocol.images import ImageJob, parse_size

__all__ = ["ModelLimits", "Plan", "plan_job", "fit_size"]

QUALITY_FACTOR = {"low": 0.5, "medium": 1.0, "standard": 1.0, "auto": 1.0, "high": 1.5, "hd": 1.5}


@dataclass(frozen=True)
class ModelLimits:
    """What one image model accepts (from its config and its pipeline)."""

    min_size: int = 64
    max_size: int = 1024
    default_size: tuple[int, int] = (512, 512)
    steps: int = 30
    max_steps: int = 100
    max_n: int = 4
    multiple: int = 8


@dataclass(frozen=True)
class Plan:
    width: int
    height: int
    steps: int
    seed: int
    n: int
    quality: str


def check_size(width: int, height: int, lim: ModelLimits) -> None:
    for side, name in ((width, "width"), (height, "height")):
        if side % lim.multiple:
            raise BadRequestError(f"size: {name} {side} must be a multiple of {lim.multiple}", param="size", code="invalid_size")
        if not lim.min_size <= side <= lim.max_size:
            raise BadRequestError(
                f"size: {name} {side} must be between {lim.min_size} and {lim.max_size} for this model",
                param="size",
                code="invalid_size",
            )


def fit_size(width: int, height: int, lim: ModelLimits) -> tuple[int, int]:
    """An input image's size scaled into the model's limits, rounded to the multiple."""
    scale = min(1.0, lim.max_size / max(width, height))
    scale = max(scale, lim.min_size / max(1, min(width, height)))
    w = max(lim.min_size, min(lim.max_size, int(width * scale) // lim.multiple * lim.multiple))
    h = max(lim.min_size, min(lim.max_size, int(height * scale) // lim.multiple * lim.multiple))
    return w, h


def plan_job(job: ImageJob, lim: ModelLimits, input_size: tuple[int, int] | None = None) -> Plan:
    """Size, steps, seed and count for ``job``; BadRequestError (with param) when out of bounds."""
    try:
        size = parse_size(job.size)
    except ValueError as exc:
        raise BadRequestError(f"size: {exc}", param="size", code="invalid_size") from None
    if size is None:
        size = fit_size(*input_size, lim) if input_size else lim.default_size
    width, height = size
    check_size(width, height, lim)
    if job.n > lim.max_n:
        raise BadRequestError(f"n must be at most {lim.max_n} for this model", param="n")
    if job.steps is not None:
        if job.steps > lim.max_steps:
            raise BadRequestError(f"steps must be at most {lim.max_steps} for this model", param="steps")
        steps = job.steps
    else:
        steps = max(1, min(lim.max_steps, round(lim.steps * QUALITY_FACTOR.get(job.quality, 1.0))))
    seed = job.seed if job.seed is not None else secrets.randbits(48)
    return Plan(width=width, height=height, steps=steps, seed=seed, n=job.n, quality=job.quality)
