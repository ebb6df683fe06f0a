"""work_mode: diffusers — a tiny random Stable Diffusion pipeline and an image-variation
pipeline built from its parts with diffusers, loaded through the config path."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.contract.image import ImageSuite
from tests.images_helpers import build_tiny_sd, build_tiny_variation, image_entry


class TestDiffusersImage(ImageSuite):
    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        sd = build_tiny_sd(tmp)
        yield [
            image_entry(cls.model, sd, max_n=cls.max_n),
            image_entry(cls.variation_model, build_tiny_variation(tmp, sd), max_n=cls.max_n),
        ]
