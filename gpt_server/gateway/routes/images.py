"""OpenAI images API: /v1/images/generations, /v1/images/edits, /v1/images/variations,
and the generated files at /v1/files/images/<id>.

The worker always answers base64; for ``response_format=url`` the images are written to
the gateway's image store and the response carries absolute URLs to this gateway. A failed
job is the worker's error status, relayed as for every capability. A client that hangs
up cancels the job (``DisconnectWatch``): the call to the worker is dropped, and the
worker stops the pipeline at its next step.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from ...errors import (
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
    UpstreamError,
)
from ...protocol.images import (
    IMAGE,
    IMAGE_EDIT,
    IMAGE_LIMITS,
    IMAGE_VARIATION,
    ImageEditForm,
    ImageGenerationRequest,
    ImageJob,
    ImageJobResult,
    ImageVariationForm,
)
from ...protocol.kinds import Capability
from ...web.error_handlers import validation_message
from ...web.responses import DisconnectWatch, FastJSONResponse
from ..files import MEDIA_TYPES, ImageStore
from ..invoke import call_json, resolve_model

__all__ = ["router", "public_router"]

log = logging.getLogger(__name__)

router = APIRouter()
public_router = APIRouter()

_JOB_FIELDS = set(ImageJob.model_fields) - {"images_b64", "mask_b64"}

def _store(request: Request) -> ImageStore:
    store = getattr(request.app.state, "image_store", None)
    if store is None:
        sa = request.app.state.config.serve_args
        store = ImageStore(sa.images_dir, sa.images_ttl)
        store.start()
        request.app.state.image_store = store
    return store

SPEC_QUALITIES = frozenset({"low", "medium", "high"})
SPEC_SIZES = frozenset({"1024x1024", "1024x1536", "1536x1024"})


def _check_result(raw: dict[str, Any]) -> ImageJobResult:
    try:
        return ImageJobResult.model_validate(raw)
    except ValidationError as exc:
        raise UpstreamError("the model worker sent a malformed image result") from exc

async def _respond(request: Request, result: ImageJobResult, response_format: str) -> FastJSONResponse:
    data: list[dict[str, Any]] = []
    if response_format == "url":
        store = _store(request)
        base = str(request.base_url).rstrip("/")
        for item in result.data:
            name = await asyncio.to_thread(store.save, base64.b64decode(item.b64_json), result.output_format)
            url = f"{base}/v1/files/images/{name}?{store.url_query(name)}"
            data.append({"url": url, "revised_prompt": item.revised_prompt})
    else:
        data = [{"b64_json": item.b64_json, "revised_prompt": item.revised_prompt} for item in result.data]
    body: dict[str, Any] = {"created": result.created, "data": data, "background": "opaque", "output_format": result.output_format}
    # OpenAI's schema allows only its own values here: others are left out (the headers say them)
    if result.quality in SPEC_QUALITIES:
        body["quality"] = result.quality
    if result.size in SPEC_SIZES:
        body["size"] = result.size
    body["usage"] = result.usage
    headers = {
        "x-image-seed": str(result.seed), "x-image-steps": str(result.steps),
        "x-image-size": result.size, "x-image-quality": result.quality,
    }
    return FastJSONResponse(body, headers=headers)

async def _run(request: Request, model: str, capability: Capability, job: ImageJob, response_format: str) -> Response:
    model = await resolve_model(request, model, capability)
    async with DisconnectWatch(request.receive) as client:  # a hang-up cancels the call (the job)
        raw = await call_json(request, model, capability, job)
    if client.gone:
        log.info("images: client disconnected; the %s job was cancelled", capability)
        return Response(status_code=499)
    return await _respond(request, _check_result(raw), response_format)

@router.post("/v1/images/generations")
async def create_image(body: ImageGenerationRequest, request: Request) -> Response:
    if body.background == "transparent":
        raise BadRequestError("background 'transparent' is not supported by diffusion models", param="background")
    job = ImageJob.model_validate(body.model_dump(include=_JOB_FIELDS))
    return await _run(request, body.model, IMAGE, job, body.response_format)

# ---- multipart: edits and variations ----------------------------------------------------
async def _read_form(request: Request, schema: type[ImageEditForm] | type[ImageVariationForm]) -> tuple[Any, list[str], str | None]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequestError("send the image as multipart/form-data with an 'image' field", param="image")
    try:
        form = await request.form(
            max_files=IMAGE_LIMITS.max_images + 1, max_fields=IMAGE_LIMITS.max_form_fields, max_part_size=256 * 1024
        )
    except MultiPartException as exc:
        raise BadRequestError(f"malformed multipart form: {exc.message}") from None
    uploads = [u for key in ("image", "image[]") for u in form.getlist(key) if isinstance(u, UploadFile)]
    if not uploads:
        raise BadRequestError("the 'image' field (an image file) is required", param="image")
    if len(uploads) > IMAGE_LIMITS.max_images:
        raise BadRequestError(f"at most {IMAGE_LIMITS.max_images} images", param="image")
    mask = form.get("mask")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    try:
        parsed = schema.model_validate(fields)
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise BadRequestError(message, param=param) from None
    images = [await _read_upload(u, "image") for u in uploads]
    mask_b64 = await _read_upload(mask, "mask") if isinstance(mask, UploadFile) else None
    return parsed, images, mask_b64

async def _read_upload(upload: UploadFile, param: str) -> str:
    data = await upload.read(IMAGE_LIMITS.max_upload_bytes + 1)
    await upload.close()
    if len(data) > IMAGE_LIMITS.max_upload_bytes:
        raise PayloadTooLargeError(f"the {param} file is larger than {IMAGE_LIMITS.max_upload_bytes} bytes", param=param)
    if not data:
        raise BadRequestError(f"the {param} file is empty", param=param)
    return base64.b64encode(data).decode("ascii")

def _form_schema(fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    props = {
        "image": {"type": "string", "format": "binary"},
        "model": {"type": "string"},
        "n": {"type": "integer", "minimum": 1, "maximum": IMAGE_LIMITS.max_n},
        "size": {"type": "string"},
        "response_format": {"type": "string", "enum": ["url", "b64_json"]},
        "output_format": {"type": "string", "enum": sorted(MEDIA_TYPES)},
        "steps": {"type": "integer", "minimum": 1},
        "seed": {"type": "integer", "minimum": 0},
        **fields,
    }
    schema = {"type": "object", "required": required, "properties": props}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}

_EDIT_SCHEMA = _form_schema(
    {"prompt": {"type": "string"}, "mask": {"type": "string", "format": "binary"}, "strength": {"type": "number"}},
    ["image", "prompt"],
)

@router.post("/v1/images/edits", openapi_extra=_EDIT_SCHEMA)
async def edit_image(request: Request) -> Response:
    form, images, mask_b64 = await _read_form(request, ImageEditForm)
    job = ImageJob.model_validate({**form.model_dump(include=_JOB_FIELDS), "images_b64": images, "mask_b64": mask_b64})
    return await _run(request, form.model, IMAGE_EDIT, job, form.response_format)

@router.post("/v1/images/variations", openapi_extra=_form_schema({}, ["image"]))
async def create_variation(request: Request) -> Response:
    form, images, _ = await _read_form(request, ImageVariationForm)
    job = ImageJob.model_validate({**form.model_dump(include=_JOB_FIELDS), "images_b64": images})
    return await _run(request, form.model, IMAGE_VARIATION, job, form.response_format)

# ---- generated files: no API key, the signed URL is the capability (until it expires) ------
@public_router.get("/v1/files/images/{name}", include_in_schema=False)
async def get_image_file(name: str, request: Request, exp: str | None = None, sig: str | None = None) -> Response:
    store = _store(request)
    left = store.check(name, exp, sig)
    data = await asyncio.to_thread(store.read, name)
    if data is None:
        raise NotFoundError("no such image (it may have expired)", param="name", code="not_found")
    fmt = name.rsplit(".", 1)[1]
    return Response(data, media_type=MEDIA_TYPES[fmt], headers={"cache-control": f"private, max-age={max(0, left)}"})
