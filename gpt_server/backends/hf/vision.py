"""OpenAI messages with ``image_url`` parts → a vision model's prompt and processor tensors."""

from __future__ import annotations

from typing import Any

from ...chat.images import MAX_IMAGES, PixelBudget, load_rgb
from ...chat.media import MediaPolicy, decode_data_url
from ...chat.templates import ChatTemplate
from ...errors import BadRequestError

__all__ = ["vision_messages", "render_vision"]


def _load_image(url: str, param: str, policy: MediaPolicy, budget: PixelBudget) -> Any:
    if not url.startswith("data:"):  # remote URLs were fetched and inlined (chat.images.inline_images)
        raise BadRequestError("image_url must be a data: URL here", param=param, code="invalid_media_url")
    data, _ = decode_data_url(url, policy.max_bytes, param)
    return load_rgb(data, param, budget)


def _parts(
    content: Any, images: list[Any], policy: MediaPolicy, budget: PixelBudget, where: str
) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        ptype = part.get("type")
        param = f"{where}.content[{j}]"
        if ptype == "text":
            out.append({"type": "text", "text": part.get("text", "")})
        elif ptype == "refusal":
            out.append({"type": "text", "text": part.get("refusal", "")})
        elif ptype == "image_url":
            if len(images) >= MAX_IMAGES:
                raise BadRequestError(f"at most {MAX_IMAGES} images per request", param=param)
            url = (part.get("image_url") or {}).get("url", "")
            images.append(_load_image(url, param + ".image_url", policy, budget))
            out.append({"type": "image"})
        else:
            raise BadRequestError(
                f"content part type '{ptype}' is not supported by this model", param=param, code="unsupported_content"
            )
    return out


def vision_messages(messages: list[dict[str, Any]], policy: MediaPolicy) -> tuple[list[dict[str, Any]], list[Any]]:
    """Messages in the processor's format (content as parts, images as placeholders) + the decoded
    images, each sized from its header against the request's pixel budget first. Blocking."""
    images: list[Any] = []
    budget = PixelBudget(policy)
    out = []
    for i, m in enumerate(messages):
        msg = {k: v for k, v in m.items() if v is not None}
        if msg.get("role") == "developer":
            msg["role"] = "system"
        msg["content"] = _parts(m.get("content"), images, policy, budget, f"messages[{i}]")
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
