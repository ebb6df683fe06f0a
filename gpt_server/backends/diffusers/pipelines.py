"""Load a diffusers pipeline directory and derive its text-to-image / image-to-image /
inpainting siblings from the same components (no second copy of the weights)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...settings import ConfigError

__all__ = ["PipelineSet", "load_pipelines", "pipeline_class_name", "default_pixels"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16", "half": "float16"}


def pipeline_class_name(path: str) -> str:
    """``_class_name`` from the directory's model_index.json (ConfigError when it is not a pipeline dir)."""
    index = Path(path) / "model_index.json"
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a diffusers pipeline directory (model_index.json: {exc})") from None
    name = data.get("_class_name") if isinstance(data, dict) else None
    if not isinstance(name, str):
        raise ConfigError(f"{index}: no _class_name")
    return name


@dataclass
class PipelineSet:
    """The loaded pipeline and the task variants built from its components on first use."""

    base: Any
    class_name: str
    device: str
    _variants: dict[str, Any] = field(default_factory=dict)

    def get(self, task: str) -> Any | None:
        """``text2image``, ``image2image`` or ``inpaint``; None when the model family has no such pipeline."""
        if task in self._variants:
            return self._variants[task]
        import diffusers

        auto = {
            "text2image": diffusers.AutoPipelineForText2Image,
            "image2image": diffusers.AutoPipelineForImage2Image,
            "inpaint": diffusers.AutoPipelineForInpainting,
        }[task]
        try:
            pipe = auto.from_pipe(self.base)
        except (ValueError, KeyError, AttributeError) as exc:
            log.info("%s: no %s pipeline (%s)", self.class_name, task, exc)
            pipe = None
        if pipe is not None:
            pipe.set_progress_bar_config(disable=True)
        self._variants[task] = pipe
        return pipe


def _torch_dtype(dtype: str | None, on_gpu: bool) -> Any:
    import torch

    if dtype and dtype not in ("auto",):
        name = _DTYPES.get(dtype.lower())
        if name is None:
            raise ConfigError(f"dtype '{dtype}' is not one of {', '.join(sorted(_DTYPES))}")
        return getattr(torch, name)
    return torch.float16 if on_gpu else torch.float32


def load_pipelines(path: str, *, on_gpu: bool, dtype: str | None) -> PipelineSet:
    """Load ``path`` (AutoPipeline when the family is known, else DiffusionPipeline) onto the device."""
    import diffusers
    import torch

    diffusers.utils.logging.disable_progress_bar()  # the worker log gets one line per step instead
    pipeline_class_name(path)  # a clear error when the directory is not a diffusers pipeline
    device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
    torch_dtype = _torch_dtype(dtype, device == "cuda")
    try:
        base = diffusers.AutoPipelineForText2Image.from_pretrained(path, dtype=torch_dtype)
    except ValueError:  # not a text-to-image family (an editing-only or variation pipeline)
        base = diffusers.DiffusionPipeline.from_pretrained(path, dtype=torch_dtype)
    base.to(device)
    base.set_progress_bar_config(disable=True)
    log.info("diffusers %s loaded from %s on %s (%s)", type(base).__name__, path, device, torch_dtype)
    return PipelineSet(base=base, class_name=type(base).__name__, device=device)


def default_pixels(pipe: Any) -> int | None:
    """The model's native image side in pixels (SD 1.5: 512, SDXL: 1024), when it can be told."""
    scale = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    sample = getattr(pipe, "default_sample_size", None)
    if sample is None:
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
    if isinstance(sample, (list, tuple)):
        sample = sample[0]
    return int(sample) * scale if isinstance(sample, int) else None
