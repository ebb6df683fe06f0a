"""OpenAI messages with ``image_url`` parts → a vision model's prompt and processor tensors."""

from __future__ import annotations

import io
from typing import Any

from ...chat.media import MediaPolicy, fetch_media
from ...chat.templates import ChatTemplate
from ...errors import BadRequestError

__all__ = ["vision_messages", "render_vision", "MAX_IMAGES"]

MAX_IMAGES = 16  # images per request


def _load_image(url: str, policy: MediaPolicy) -> Any:
    from PIL import Image, UnidentifiedImageError

    data, _ = fetch_media(url, policy)
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise BadRequestError(f"image_url is not a readable image: {exc}", param="messages", code="invalid_image") from exc
    return img.convert("RGB")


def _parts(content: Any, images: list[Any], policy: MediaPolicy) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    out: list[dict[str, Any]] = []
    for part in content:
        ptype = part.get("type")
        if ptype == "text":
            out.append({"type": "text", "text": part.get("text", "")})
        elif ptype == "refusal":
            out.append({"type": "text", "text": part.get("refusal", "")})
        elif ptype == "image_url":
            if len(images) >= MAX_IMAGES:
                raise BadRequestError(f"at most {MAX_IMAGES} images per request", param="messages")
            url = (part.get("image_url") or {}).get("url", "")
            images.append(_load_image(url, policy))
            out.append({"type": "image"})
        else:
            raise BadRequestError(
                f"content part type '{ptype}' is not supported by this model", param="messages", code="unsupported_content"
            )
    return out


def vision_messages(messages: list[dict[str, Any]], policy: MediaPolicy) -> tuple[list[dict[str, Any]], list[Any]]:
    """Messages in the processor's format (content as parts, images as placeholders) + the images. Blocking."""
    images: list[Any] = []
    out = []
    for m in messages:
        msg = {k: v for k, v in m.items() if v is not None}
        if msg.get("role") == "developer":
            msg["role"] = "system"
        msg["content"] = _parts(m.get("content"), images, policy)
        out.append(msg)
    return out, images


def render_vision(
    template: ChatTemplate, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True, **kwargs: Any
) -> str:
    """Render already-converted vision messages with the shared sandboxed template."""
    from jinja2 import TemplateError

    from ...chat.templates import _compile  # the shared sandboxed environment

    try:
        return _compile(template.source).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=template.bos_token,
            eos_token=template.eos_token, **kwargs,
        )
    except BadRequestError:
        raise
    except (TemplateError, TypeError, KeyError, ValueError) as exc:
        raise BadRequestError(f"messages could not be rendered with the model's chat template: {exc}", param="messages") from exc
