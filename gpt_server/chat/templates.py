"""Chat templates rendered in a sandboxed Jinja environment."""

from __future__ import annotations

import datetime as _dt
from functools import lru_cache
from typing import Any

import orjson
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import BadRequestError, InternalError

__all__ = ["ChatTemplate", "normalise_messages", "FALLBACK_TEMPLATE"]

# ChatML, used only when a model ships no template of its own.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise(message: str) -> None:
    raise BadRequestError(f"chat template: {message}", param="messages")


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    opt = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(value, option=opt).decode()


def _strftime_now(fmt: str) -> str:
    return _dt.datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def _compile(source: str):  # noqa: ANN202 - jinja Template
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False}
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _content_text(content: Any) -> str | None:
    """Flatten OpenAI content parts to text for text-only templates."""
    if content is None or isinstance(content, str):
        return content
    texts = []
    for part in content:
        ptype = part.get("type")
        if ptype == "text":
            texts.append(part.get("text", ""))
        elif ptype == "refusal":
            texts.append(part.get("refusal", ""))
        else:
            raise BadRequestError(
                f"content part type '{ptype}' is not supported by this model",
                param="messages",
                code="unsupported_content",
            )
    return "\n".join(texts)


def normalise_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages → template messages (text content, developer → system)."""
    out = []
    for m in messages:
        msg = {k: v for k, v in m.items() if v is not None}
        if msg.get("role") == "developer":
            msg["role"] = "system"
        msg["content"] = _content_text(m.get("content")) or ""
        if msg.get("tool_calls"):  # copies: the caller's request is not written into
            calls = []
            for tc in msg["tool_calls"]:
                fn = dict(tc.get("function", {}))
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments_json"] = orjson.loads(args) if args else {}
                    except orjson.JSONDecodeError:
                        fn["arguments_json"] = args
                calls.append({**tc, "function": fn})
            msg["tool_calls"] = calls
        out.append(msg)
    return out


class ChatTemplate:
    """A model's chat template plus its special tokens."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source or FALLBACK_TEMPLATE
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _compile(self.source)
        except TemplateError as exc:
            raise InternalError(f"the model's chat template does not compile: {exc}") from exc

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        ctx = {
            "messages": normalise_messages(messages),
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **kwargs,
        }
        if tools:
            ctx["tools"] = tools
        try:
            return self._template.render(**ctx)
        except BadRequestError:
            raise
        except (TemplateError, TypeError, KeyError, ValueError) as exc:
            raise BadRequestError(
                f"messages could not be rendered with the model's chat template: {exc}",
                param="messages",
            ) from exc
