"""diffusers backend: ``image`` (generations), ``image_edit`` (edits), ``image_variation``.

Generation runs in a thread, one job at a time (a pipeline is not thread-safe). The
result goes back as the one chunk of a streamed body, which the worker answers only
when it exists: a failure gets its own status (400 or 500, in the OpenAI shape), and
meanwhile a gateway that hangs up (its client left) cancels the body iterator; that
sets a flag the step callback checks, and the pipeline stops at its next step.
Progress is logged per step.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from pydantic import BaseModel

from ...errors import BadRequestError, GatewayError, InternalError
from ...protocol.images import IMAGE, IMAGE_VARIATION, ImageJob
from ...protocol.kinds import Capability
from ..base import Backend, BackendSpec, BinaryResult, payload_as
from ..devices import torch_on_gpu
from . import DiffusersOptions
from .codec import decode_image, encode_image, mask_from
from .params import ModelLimits, Plan, plan_job
from .pipelines import PipelineSet, default_pixels, load_pipelines

__all__ = ["DiffusersBackend", "JobCancelled"]

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised from the step callback when the client has gone away."""


class DiffusersBackend(Backend):
    """``image`` and ``image_edit`` for text-to-image families; ``image_variation`` for
    image-variation pipelines (set once the pipeline is loaded)."""

    capabilities: frozenset[str] = frozenset({"image", "image_edit"})
    options: DiffusersOptions

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.pipes: PipelineSet | None = None
        self.limits = ModelLimits()
        self._lock = threading.Lock()
        self._jobs = 0

    def load(self) -> None:
        import torch

        mc = self.options
        on_gpu = torch_on_gpu(self.spec)
        if not on_gpu:
            torch.set_num_threads(mc.n_threads or self.spec.n_threads or min(4, os.cpu_count() or 1))
        self.pipes = load_pipelines(self.spec.model_path, on_gpu=on_gpu, dtype=mc.dtype)
        self.limits = self._limits()
        if "ImageVariation" in self.pipes.class_name:  # image in, images out: no prompt
            self.capabilities = frozenset({"image_variation"})
        log.info("image limits: %s", self.limits)

    def _limits(self) -> ModelLimits:
        mc = self.options
        lo, hi = mc.image_min_size or 64, mc.image_max_size or 1024
        if lo > hi:
            raise ValueError(f"image_min_size {lo} is larger than image_max_size {hi}")
        if mc.default_image_size:
            w, h = (int(x) for x in mc.default_image_size.split("x"))
        else:
            side = default_pixels(self.pipes.base) if self.pipes else None
            w = h = min(hi, max(lo, side or 512))
        steps = mc.num_inference_steps or 30
        max_steps = max(steps, mc.max_inference_steps or 100)
        return ModelLimits(lo, hi, (w, h), steps, max_steps, mc.max_n or 4)

    def close(self) -> None:
        self.pipes = None

    # ---- requests -----------------------------------------------------------------
    async def invoke(self, capability: Capability, payload: BaseModel) -> BinaryResult | dict[str, Any]:
        if capability not in self.capabilities:
            return await super().invoke(capability, payload)
        job = payload_as(payload, ImageJob)
        run = await asyncio.to_thread(self._prepare, capability, job)
        return BinaryResult("application/json", self._result_body(run))

    def _prepare(self, capability: Capability, job: ImageJob) -> Callable[[threading.Event], dict[str, Any]]:
        """Validate and decode everything a client can get wrong (→ 400) before the body starts."""
        assert self.pipes is not None
        if capability == IMAGE:
            pipe = self.pipes.get("text2image") or self.pipes.base
            plan = plan_job(job, self.limits)
            return lambda cancel: self._generate(pipe, job, plan, {}, cancel)
        image = self._single_image(job)
        if capability == IMAGE_VARIATION:
            plan = plan_job(job, self.limits, input_size=image.size)
            extra = {"image": image.convert("RGB").resize((plan.width, plan.height))}
            base = self.pipes.base
            return lambda cancel: self._generate(base, job, plan, extra, cancel)
        return self._prepare_edit(job, image)

    def _single_image(self, job: ImageJob) -> Any:
        assert self.pipes is not None
        if not job.images_b64:
            raise BadRequestError("an image is required", param="image")
        if len(job.images_b64) > 1:
            raise BadRequestError(
                f"{self.pipes.class_name} takes one image at a time; send a single image", param="image"
            )
        return decode_image(job.images_b64[0], "image")

    def _prepare_edit(self, job: ImageJob, image: Any) -> Callable[[threading.Event], dict[str, Any]]:
        assert self.pipes is not None
        mask_img = decode_image(job.mask_b64, "mask") if job.mask_b64 else None
        if mask_img is not None and mask_img.size != image.size:
            raise BadRequestError(
                f"mask is {mask_img.width}x{mask_img.height} but image is {image.width}x{image.height}", param="mask"
            )
        mask = mask_from(mask_img, image)
        task = "inpaint" if mask is not None else "image2image"
        pipe = self.pipes.get(task)
        if pipe is None:
            raise BadRequestError(f"{self.pipes.class_name} has no {task} pipeline", param="mask" if mask else "image")
        plan = plan_job(job, self.limits, input_size=image.size)
        size = (plan.width, plan.height)
        extra: dict[str, Any] = {"image": image.convert("RGB").resize(size)}
        if mask is not None:
            extra["mask_image"] = mask.resize(size)
        if job.strength is not None:
            extra["strength"] = job.strength
        _check_strength(pipe, plan.steps, job.strength)
        return lambda cancel: self._generate(pipe, job, plan, extra, cancel)

    async def _result_body(self, run: Callable[[threading.Event], dict[str, Any]]) -> AsyncIterator[bytes]:
        """The result, as the one chunk of the worker's body; a failure is raised before it,
        so the worker answers it with its own status (400 or 500)."""
        cancel = threading.Event()
        try:
            result = await asyncio.to_thread(run, cancel)
        except GatewayError:
            raise
        except ValueError as exc:  # diffusers' own input checks (check_inputs, strength × steps < 1 …)
            log.info("image job refused by the pipeline: %s", exc)
            raise BadRequestError(str(exc)[:500]) from None
        except Exception as exc:
            log.exception("image generation failed")
            raise InternalError(f"image generation failed: {type(exc).__name__}") from exc
        except BaseException:  # cancelled (the gateway hung up): stop at the next step
            cancel.set()
            raise
        yield orjson.dumps(result)

    # ---- the pipeline call (worker thread) ------------------------------------------
    def _generate(self, pipe: Any, job: ImageJob, plan: Plan, extra: dict[str, Any], cancel: threading.Event) -> dict[str, Any]:
        import torch

        with self._lock:
            if cancel.is_set():
                raise JobCancelled
            self._jobs += 1
            tag = f"image job {self._jobs}"
            log.info("%s: %dx%d, %d step(s), n=%d, seed %d", tag, plan.width, plan.height, plan.steps, plan.n, plan.seed)
            started = time.perf_counter()
            kwargs = self._call_kwargs(pipe, job, plan, extra, tag, cancel)
            kwargs["generator"] = torch.Generator(device="cpu").manual_seed(plan.seed)
            with torch.inference_mode():
                images = pipe(**kwargs).images
            tokens = self._prompt_tokens(pipe, job.prompt)  # under the lock: a fast tokenizer is not thread-safe
            log.info("%s: done in %.2f s", tag, time.perf_counter() - started)
        data = [
            {"b64_json": base64.b64encode(encode_image(img, job.output_format, job.output_compression)).decode("ascii"),
             "revised_prompt": job.prompt}
            for img in images
        ]
        per_image = self._image_tokens(plan)
        image_tokens = per_image * len(job.images_b64)
        return {
            "created": int(time.time()),
            "data": data,
            "output_format": job.output_format,
            "size": f"{plan.width}x{plan.height}",
            "quality": plan.quality,
            "steps": plan.steps,
            "seed": plan.seed,
            "usage": {
                "input_tokens": tokens + image_tokens,
                "input_tokens_details": {"text_tokens": tokens, "image_tokens": image_tokens},
                "output_tokens": per_image * plan.n,
                "total_tokens": tokens + image_tokens + per_image * plan.n,
            },
        }

    def _call_kwargs(
        self, pipe: Any, job: ImageJob, plan: Plan, extra: dict[str, Any], tag: str, cancel: threading.Event
    ) -> dict[str, Any]:
        params = inspect.signature(pipe.__call__).parameters
        kwargs: dict[str, Any] = {
            "prompt": job.prompt,
            "num_inference_steps": plan.steps,
            "num_images_per_prompt": plan.n,
            "height": plan.height,
            "width": plan.width,
            "output_type": "pil",
            **extra,
        }
        if job.negative_prompt and "negative_prompt" in params:
            kwargs["negative_prompt"] = job.negative_prompt
        guidance = job.guidance_scale if job.guidance_scale is not None else self.options.guidance_scale
        if guidance is not None and "guidance_scale" in params:
            kwargs["guidance_scale"] = guidance
        on_step = _step_callback(tag, plan.steps, cancel)
        if "callback_on_step_end" in params:
            kwargs["callback_on_step_end"] = on_step
        elif "callback" in params:  # older pipelines: callback(step, timestep, latents)
            kwargs["callback"] = lambda step, timestep, latents: on_step(pipe, step, timestep, {})
        return {k: v for k, v in kwargs.items() if k in params}

    @staticmethod
    def _prompt_tokens(pipe: Any, prompt: str) -> int:
        tok = getattr(pipe, "tokenizer", None)
        if tok is None or not prompt:
            return 0
        try:
            return len(tok(prompt, truncation=True).input_ids)
        except Exception:  # noqa: BLE001 - usage is best effort
            return 0

    def _image_tokens(self, plan: Plan) -> int:
        """Latent patches of one image (16×16-pixel tiles): a size-proportional output measure."""
        return (plan.width // 16) * (plan.height // 16)


def _check_strength(pipe: Any, steps: int, strength: float | None) -> None:
    """Image-to-image runs int(steps × strength) steps: refuse a request that leaves none."""
    param = inspect.signature(pipe.__call__).parameters.get("strength")
    if param is None:
        return
    value = strength if strength is not None else param.default
    if isinstance(value, (int, float)) and int(steps * value) < 1:
        raise BadRequestError(
            f"strength {value} with {steps} step(s) leaves no denoising step; raise steps or strength",
            param="strength",
        )


def _step_callback(tag: str, total: int, cancel: threading.Event) -> Callable[..., dict[str, Any]]:
    def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        total_now = int(getattr(pipe, "num_timesteps", 0) or total)
        log.info("%s: step %d/%d", tag, step + 1, total_now)
        if cancel.is_set():
            log.info("%s: cancelled (client gone) after step %d/%d", tag, step + 1, total_now)
            raise JobCancelled
        return callback_kwargs

    return on_step_end
