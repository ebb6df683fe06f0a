"""Pure request shaping for Triton: presets, tensor names, the ``generate_stream`` body, and
reading a streamed response (no I/O here, so the shapes are unit-tested without a server)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from ...errors import BadRequestError

__all__ = [
    "Preset", "PRESETS", "Sampling", "build_inputs", "csv_row", "qwen_vl_messages", "response_text",
    "response_logprobs", "tensor_name",
]

# ChatML as Qwen2 writes it (the system default included), for tokenizers shipped without a template
QWEN_CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Preset:
    """What a ``preset`` adds to the tokenizer's defaults."""

    template: str | None = None  # used when the tokenizer has no chat template
    stop_words: tuple[str, ...] = ()
    end_token: str | None = None  # its id is sent as end_id
    images: bool = False  # message images go to Triton in the image_input tensor


PRESETS: dict[str, Preset] = {
    "trtllm": Preset(),
    "qwen2-chat": Preset(template=QWEN_CHATML, stop_words=("<|im_end|>", "<|endoftext|>"), end_token="<|im_end|>"),
    "qwen-vl": Preset(template=QWEN_CHATML, stop_words=("<|im_end|>", "<|endoftext|>"), end_token="<|im_end|>", images=True),
}


def tensor_name(names: dict[str, str], role: str) -> str:
    """The tensor playing ``role`` in the served model ('' when the model has none)."""
    return names.get(role, role)


def csv_row(words: list[str]) -> str:
    """Words as the one CSV row TensorRT-LLM's preprocessing reads from stop_words/bad_words."""
    buf = io.StringIO()
    csv.writer(buf, quoting=csv.QUOTE_MINIMAL).writerow(words)
    return buf.getvalue().removesuffix("\r\n")


@dataclass
class Sampling:
    """One choice's generation parameters, in TensorRT-LLM's terms."""

    max_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    beam_width: int = 1
    seed: int | None = None
    logprobs: bool = False
    stop_words: list[str] = field(default_factory=list)
    bad_words: list[str] = field(default_factory=list)
    end_id: int | None = None
    pad_id: int | None = None


def build_inputs(names: dict[str, str], prompt: str, s: Sampling, images: list[str] | None = None) -> dict[str, Any]:
    """The JSON body of ``generate_stream``: only what differs from TensorRT-LLM's defaults,
    under the model's tensor names; greedy (temperature 0) is top_k 1."""
    values: dict[str, Any] = {"text_input": prompt, "max_tokens": s.max_tokens, "stream": True}
    if s.temperature == 0:
        values["top_k"] = 1
    else:
        if s.temperature != 1.0:
            values["temperature"] = s.temperature
        if s.top_k:
            values["top_k"] = s.top_k
        if s.top_p < 1.0:
            values["top_p"] = s.top_p
    optional = {
        "repetition_penalty": (s.repetition_penalty, 1.0),
        "presence_penalty": (s.presence_penalty, 0.0),
        "frequency_penalty": (s.frequency_penalty, 0.0),
        "beam_width": (s.beam_width, 1),
        "random_seed": (s.seed, None),
        "return_log_probs": (s.logprobs or None, None),
        "end_id": (s.end_id, None),
        "pad_id": (s.pad_id, None),
    }
    for role, (value, default) in optional.items():
        if value != default:
            values[role] = value
    if s.stop_words:
        values["stop_words"] = csv_row(s.stop_words)
    if s.bad_words:
        values["bad_words"] = csv_row(s.bad_words)
    if images:
        values["image_input"] = images
    body: dict[str, Any] = {}
    for role, value in values.items():
        name = tensor_name(names, role)
        if name:
            body[name] = value
        elif role in ("text_input", "max_tokens"):
            raise BadRequestError(f"tensor_names leaves out '{role}', which every request needs")
    return body


def qwen_vl_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Qwen-VL's prompt form: each image part becomes ``Picture n: <img>n</img>`` in the text and
    its URL (a data: URL once inlined) goes, in order, to the image_input tensor."""
    out: list[dict[str, Any]] = []
    images: list[str] = []
    for m in messages:
        content = m.get("content")
        if not isinstance(content, list):
            out.append(m)
            continue
        texts: list[str] = []
        for part in content:
            if part.get("type") == "image_url":
                images.append(str((part.get("image_url") or {}).get("url", "")))
                texts.append(f"Picture {len(images)}: <img>{len(images)}</img>\n")
            elif part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                raise BadRequestError(f"content part type '{part.get('type')}' is not supported by this model",
                                      param="messages", code="unsupported_content")
        out.append({**m, "content": "".join(texts)})
    return out, images


def response_text(resp: dict[str, Any], name: str) -> str:
    """``text_output`` of one streamed response (a string, or a one-element list of one)."""
    v = resp.get(name, "")
    while isinstance(v, list):
        v = v[0] if v else ""
    return v if isinstance(v, str) else str(v)


def response_logprobs(resp: dict[str, Any], name: str) -> list[float] | None:
    """``output_log_probs`` of one response, flattened (None when the model sent none)."""
    if not name or name not in resp:
        return None
    flat: list[float] = []
    stack = [resp[name]]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        elif isinstance(v, (int, float)):
            flat.append(float(v))
    return flat
