"""Image inputs of embedding requests, fetched and decoded on the worker.

Each image is an http(s) URL (fetched by the checked ``MediaFetcher``: one deadline, size cap,
no private addresses unless allowed), a ``data:`` URL or bare base64. It is opened lazily,
charged to the request's ``PixelBudget`` from its header and only then decoded, off the event
loop; the engine gets RGB ``PIL`` images in the inputs' places.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from typing import Any

from ...chat.images import PixelBudget, load_rgb
from ...chat.media import MediaFetcher
from ...errors import BadRequestError
from ...protocol.embeddings import EmbeddingInput, EmbedImage

__all__ = ["load_images", "refuse_images", "UNSUPPORTED"]

UNSUPPORTED = "unsupported_input"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,31}:")
_OFF_LOOP_CHARS = 256 * 1024


def _item_param(image: EmbedImage) -> str:
    """The input an image belongs to: ``input[2]`` for ``input[2].image``, ``messages[0]`` for a part."""
    return image.param.split(".", 1)[0]


def refuse_images(inputs: list[EmbeddingInput], why: str) -> None:
    """400 ``unsupported_input`` when ``inputs`` hold an image (``why``: what the model takes)."""
    first = next((x for x in inputs if isinstance(x, EmbedImage)), None)
    if first is not None:
        root = _item_param(first).split("[", 1)[0]
        raise BadRequestError(f"{why}; it does not take image inputs ({first.param})", param=root, code=UNSUPPORTED)


def _bare_base64(data: str, max_bytes: int, param: str) -> bytes:
    if len(data) > max_bytes * 4 // 3 + 8:
        raise BadRequestError(f"the image is larger than {max_bytes} bytes", param=param, code="invalid_media_url")
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(
            "an image must be an http(s) URL, a data: URL or base64 text (this is none of them)",
            param=param, code="invalid_image",
        ) from None
    if len(raw) > max_bytes:
        raise BadRequestError(f"the image is larger than {max_bytes} bytes", param=param, code="invalid_media_url")
    return raw


async def _fetch(image: EmbedImage, fetcher: MediaFetcher) -> bytes:
    src = image.image
    if _SCHEME.match(src):  # data:, http(s): (the fetcher refuses other schemes, naming them)
        data, _ = await fetcher.fetch(src, image.param)
        return data
    if len(src) < _OFF_LOOP_CHARS:
        return _bare_base64(src, fetcher.policy.max_bytes, image.param)
    return await asyncio.to_thread(_bare_base64, src, fetcher.policy.max_bytes, image.param)


async def load_images(inputs: list[EmbeddingInput], fetcher: MediaFetcher) -> list[Any]:
    """``inputs`` with every image replaced by its decoded RGB image, in order. An input with
    both an image and text is refused: the engines here embed them apart (CLIP-style)."""
    both = next((x for x in inputs if isinstance(x, EmbedImage) and x.text is not None), None)
    if both is not None:
        raise BadRequestError(
            "this model embeds text and images apart (CLIP-style), each into the same space: an input "
            "with both an image and text cannot be embedded; send them as separate inputs",
            param=_item_param(both), code=UNSUPPORTED,
        )
    budget = PixelBudget(fetcher.policy)
    out: list[Any] = []
    for x in inputs:
        if isinstance(x, EmbedImage):
            data = await _fetch(x, fetcher)
            out.append(await asyncio.to_thread(load_rgb, data, x.param, budget))
        else:
            out.append(x)
    return out
