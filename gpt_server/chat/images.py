"""Images of chat messages: counted, sized from their header before anything decodes them.

A 27 KiB PNG can declare 13000×13000 pixels (650 MiB once decoded), so every image is opened
lazily (PIL reads the header only), charged to the request's ``PixelBudget`` and only then
decoded. ``inline_images`` runs these checks on the event loop's side before a request goes
anywhere: remote URLs are fetched through the checked ``MediaFetcher`` and become ``data:``
URLs, so neither a local engine nor a relayed engine server fetches anything itself.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from typing import Any

from ..errors import BadRequestError
from .media import MediaFetcher, MediaPolicy

__all__ = ["IMAGE_FORMATS", "MAX_IMAGES", "PixelBudget", "image_parts", "inline_images", "load_rgb"]

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # what PIL may open (no EPS, TIFF, …)
MAX_IMAGES = 16  # images per request


def _bad_image(message: str, param: str) -> BadRequestError:
    return BadRequestError(message, param=param, code="invalid_image")


class PixelBudget:
    """Pixels one request may decode: a cap per image and one for all its images."""

    def __init__(self, policy: MediaPolicy) -> None:
        self.per_image = policy.max_image_pixels
        self.total = policy.max_request_pixels
        self.used = 0

    def charge(self, width: int, height: int, param: str) -> None:
        n = width * height
        if n > self.per_image:
            raise _bad_image(f"the image is {width}x{height} pixels; at most {self.per_image} pixels per image", param)
        if self.used + n > self.total:
            raise _bad_image(f"the request's images have more than {self.total} pixels together", param)
        self.used += n


def _open(data: bytes, param: str) -> Any:
    """The image, opened lazily: PIL has read the header, nothing is decoded yet."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _bad_image(f"image_url is not a readable image ({', '.join(IMAGE_FORMATS).lower()}): {exc}", param) from exc


def load_rgb(data: bytes, param: str, budget: PixelBudget) -> Any:
    """The decoded RGB image, after its header passed ``budget``. Blocking."""
    from PIL import Image

    img = _open(data, param)
    budget.charge(img.width, img.height, param)
    try:
        img.load()
        return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _bad_image(f"image_url is not a readable image: {exc}", param) from exc


def _header(data: bytes, param: str) -> tuple[str, int, int]:
    img = _open(data, param)
    return str(img.format), int(img.width), int(img.height)


def _data_url(data: bytes, fmt: str) -> str:
    from PIL import Image

    return f"data:{Image.MIME.get(fmt, 'image/' + fmt.lower())};base64,{base64.b64encode(data).decode('ascii')}"


def image_parts(messages: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(param, part) of every ``image_url`` part, in order."""
    for i, m in enumerate(messages):
        content = m.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "image_url":
                    yield f"messages[{i}].content[{j}].image_url", part


async def _checked_url(url: str, param: str, fetcher: MediaFetcher, budget: PixelBudget) -> str:
    data, _ = await fetcher.fetch(url, param)
    fmt, w, h = await asyncio.to_thread(_header, data, param)
    budget.charge(w, h, param)
    if url.startswith("data:"):
        return url
    return await asyncio.to_thread(_data_url, data, fmt)


async def inline_images(messages: list[dict[str, Any]], fetcher: MediaFetcher) -> list[dict[str, Any]]:
    """``messages`` with every image checked (count, bytes, pixels from the header) and every
    remote image URL replaced by a ``data:`` URL of the fetched image; 400 naming the part."""
    found = list(image_parts(messages))
    if not found:
        return messages
    if len(found) > MAX_IMAGES:
        raise BadRequestError(f"at most {MAX_IMAGES} images per request", param=found[MAX_IMAGES][0])
    budget = PixelBudget(fetcher.policy)
    urls: dict[int, str] = {}
    for param, part in found:
        url = (part.get("image_url") or {}).get("url", "")
        if not isinstance(url, str):
            raise BadRequestError("image_url.url must be a string", param=param)
        urls[id(part)] = await _checked_url(url, param, fetcher, budget)
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list) and any(id(p) in urls for p in content):
            content = [
                {**p, "image_url": {**(p.get("image_url") or {}), "url": urls[id(p)]}} if id(p) in urls else p
                for p in content
            ]
            m = {**m, "content": content}
        out.append(m)
    return out
