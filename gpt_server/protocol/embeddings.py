"""Embeddings: the OpenAI wire schema, the internal worker payload, and the result shape.

``POST /v1/embeddings`` accepts ``input`` as a string, a list of strings, a list of token
ids or a list of token-id lists. The worker answers the final OpenAI body (the gateway
only stamps ``model``): vectors as float lists, or as base64 of little-endian float32
(what the openai SDK asks for by default and decodes with ``numpy.frombuffer``).

Images, for models that embed text and images in one space (CLIP-style), come in the two
shapes clients use: Jina's items in ``input`` (``{"text": "..."}``, ``{"image": "<http(s)
URL | data: URL | bare base64>"}``, mixed with plain strings), or vLLM's ``messages`` (chat
messages with ``text`` and ``image_url`` parts; one embedding per request). An image costs
no tokens in ``usage`` (it counts text tokens only). A model that embeds text only answers
an image with a 400 ``unsupported_input``; the ``embed_image`` capability marks the models
that take them (``/v1/models`` lists it).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import BadRequestError
from .kinds import Kind, declare_capability, declare_kind
from .openai import LIMITS, ModelName, OpenAIBaseModel

__all__ = [
    "EMBED_LIMITS",
    "EmbedImage",
    "EmbeddingInput",
    "EmbeddingRequest",
    "EmbedPayload",
    "EMBED",
    "EMBED_IMAGE",
    "embed_payload",
    "has_images",
]


class _EmbedLimits:
    max_inputs = 2048  # OpenAI's limit on inputs per request
    max_text_chars = 1_000_000
    max_token_ids = 131_072
    max_dimensions = 65_536
    max_images = 64  # images per request (each also counts against the worker's pixel budget)
    max_parts = 256  # content parts of all messages of a vLLM-style request


EMBED_LIMITS = _EmbedLimits()


class EmbedImage(BaseModel):
    """An image input: an http(s) URL, a ``data:`` URL or bare base64, fetched and decoded by
    the worker. ``text`` is text given together with it in one input (a model that embeds
    text and images apart refuses that); ``param`` names where the image was in the request."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1)
    text: str | None = Field(None, min_length=1, max_length=EMBED_LIMITS.max_text_chars)
    param: str = Field("input", max_length=200)


EmbeddingInput = str | list[int] | EmbedImage


def _check_ids(ids: list[Any], where: str) -> list[int]:
    if not ids:
        raise ValueError(f"{where} is an empty token list")
    if len(ids) > EMBED_LIMITS.max_token_ids:
        raise ValueError(f"{where} has more than {EMBED_LIMITS.max_token_ids} tokens")
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError(f"{where} must hold non-negative integer token ids")
    return ids


def _check_text(s: str, where: str) -> str:
    if not s:
        raise ValueError(f"{where} is an empty string")
    if len(s) > EMBED_LIMITS.max_text_chars:
        raise ValueError(f"{where} is longer than {EMBED_LIMITS.max_text_chars} characters")
    return s


def normalise_input(v: Any) -> list[Any]:
    """string | [string] | [int] | [[int]] → a list of inputs (strings or id lists); Jina-style
    ``{"text"|"image": ...}`` items stay objects, for :func:`embed_payload` to read."""
    if isinstance(v, str):
        return [_check_text(v, "input")]
    if not isinstance(v, list):
        raise ValueError("must be a string, a list of strings, a list of token ids or a list of token-id lists")
    if not v:
        raise ValueError("must not be empty")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return [_check_ids(v, "input")]
    if len(v) > EMBED_LIMITS.max_inputs:
        raise ValueError(f"holds more than {EMBED_LIMITS.max_inputs} inputs")
    out: list[Any] = []
    for i, x in enumerate(v):
        if isinstance(x, str):
            out.append(_check_text(x, f"input[{i}]"))
        elif isinstance(x, list):
            out.append(_check_ids(x, f"input[{i}]"))
        elif isinstance(x, dict):
            out.append(x)
        else:
            raise ValueError(f"input[{i}] must be a string, a list of token ids or an object with 'text' or 'image'")
    return out


class EmbeddingRequest(OpenAIBaseModel):
    model: ModelName = ""
    input: Any = None
    # vLLM's chat-style embedding request: one embedding of these messages' text or image
    messages: list[Any] | None = Field(default=None, max_length=LIMITS.max_messages)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=EMBED_LIMITS.max_dimensions)
    user: str | None = Field(default=None, max_length=256)
    # gpt_server's rerank through the embeddings call: on a rerank model, `input` holds the
    # documents and each embedding is [relevance score to this query]
    query: str | None = Field(default=None, min_length=1, max_length=1_000_000)

    @field_validator("input")
    @classmethod
    def _input(cls, v: Any) -> list[Any] | None:
        return None if v is None else normalise_input(v)


class EmbedPayload(BaseModel):
    """What the gateway sends a worker for the ``embed`` capability."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[EmbeddingInput] = Field(min_length=1, max_length=EMBED_LIMITS.max_inputs)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=EMBED_LIMITS.max_dimensions)

    @model_validator(mode="after")
    def _few_images(self) -> EmbedPayload:
        if sum(isinstance(x, EmbedImage) for x in self.inputs) > EMBED_LIMITS.max_images:
            raise ValueError(f"at most {EMBED_LIMITS.max_images} images per request")
        return self


EMBED = declare_capability("embed", EmbedPayload, kinds=("embedding",))
# a marker a worker adds to ``embed`` when its model embeds images too (never invoked itself:
# images travel in the ``embed`` payload); no kind offers it by default
EMBED_IMAGE = declare_capability("embed_image", None, kinds=())
declare_kind(
    Kind(
        name="embedding",
        label="embeddings",
        default_engine="sentence_transformers",
        description="text embeddings (/v1/embeddings)",
        legacy_names=("embeddings",),
        legacy_engines={
            "embedding_infinity": "infinity",
            "embedding_sentence_transformers": "sentence_transformers",
            "embedding_vllm": "vllm",
        },
    )
)


def _image(v: Any, param: str) -> str:
    if not isinstance(v, str) or not v:
        raise BadRequestError("an image must be an http(s) URL, a data: URL or base64 text", param=param)
    return v


def _item(x: dict[str, Any], i: int) -> EmbeddingInput:
    """A Jina-style item: ``{"text": ...}`` → the text, ``{"image": ...}`` → an image."""
    where = f"input[{i}]"
    unknown = sorted(set(x) - {"text", "image"})
    if unknown or not x:
        raise BadRequestError(f"{where} must have 'text' or 'image' (unknown keys: {', '.join(unknown) or 'none given'})", param=where)
    text = x.get("text")
    if text is not None and not isinstance(text, str):
        raise BadRequestError(f"{where}.text must be a string", param=f"{where}.text")
    if text is not None:
        try:
            text = _check_text(text, f"{where}.text")
        except ValueError as exc:
            raise BadRequestError(str(exc), param=f"{where}.text") from None
    if "image" not in x:
        assert text is not None
        return text
    return EmbedImage(image=_image(x["image"], f"{where}.image"), text=text, param=f"{where}.image")


def _part_text(part: dict[str, Any], where: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise BadRequestError("a text part needs 'text' as a string", param=where)
    return text


def _part_image(part: dict[str, Any], where: str) -> str:
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    return _image(url, f"{where}.image_url")


def _messages_item(messages: list[Any]) -> EmbeddingInput:
    """vLLM's ``messages`` → one input: their text parts joined by newlines, or their one image
    (with the text, if any, for the model to accept or refuse)."""
    texts: list[str] = []
    images: list[tuple[str, str]] = []  # (url, param)
    parts = 0
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list):
            raise BadRequestError("each message needs 'content': a string or a list of parts", param=f"messages[{i}]")
        parts += len(content)
        if parts > EMBED_LIMITS.max_parts:
            raise BadRequestError(f"at most {EMBED_LIMITS.max_parts} content parts", param=f"messages[{i}].content")
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(_part_text(part, where))
            elif kind == "image_url":
                images.append((_part_image(part, where), f"{where}.image_url"))
            else:
                raise BadRequestError(f"content parts may be 'text' or 'image_url', not {kind!r}", param=f"{where}.type")
    if len(images) > 1:
        raise BadRequestError(
            f"messages give one embedding, of one image; these have {len(images)} (send one request per image)",
            param=images[1][1],
        )
    text = "\n".join(t for t in texts if t) or None
    if text is not None and len(text) > EMBED_LIMITS.max_text_chars:
        raise BadRequestError(f"the messages' text is longer than {EMBED_LIMITS.max_text_chars} characters", param="messages")
    if images:
        return EmbedImage(image=images[0][0], text=text, param=images[0][1])
    if text is None:
        raise BadRequestError("the messages hold no text and no image", param="messages")
    return text


def embed_payload(body: EmbeddingRequest) -> EmbedPayload:
    """The worker payload; 400 (with ``param``) for what the schema alone cannot say."""
    if body.messages is not None:
        if body.input is not None:
            raise BadRequestError("give either 'input' or 'messages', not both", param="messages")
        if not body.messages:
            raise BadRequestError("'messages' must not be empty", param="messages")
        inputs: list[EmbeddingInput] = [_messages_item(body.messages)]
    elif body.input is None:
        raise BadRequestError("'input' is a required property", param="input")
    else:
        inputs = [_item(x, i) if isinstance(x, dict) else x for i, x in enumerate(body.input)]
        images = [x for x in inputs if isinstance(x, EmbedImage)]
        if len(images) > EMBED_LIMITS.max_images:
            raise BadRequestError(f"at most {EMBED_LIMITS.max_images} images per request", param=images[EMBED_LIMITS.max_images].param)
    return EmbedPayload(inputs=inputs, encoding_format=body.encoding_format, dimensions=body.dimensions)


def has_images(payload: EmbedPayload) -> bool:
    return any(isinstance(x, EmbedImage) for x in payload.inputs)
