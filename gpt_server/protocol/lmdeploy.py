"""LMDeploy api_server's own routes: ``/v1/chat/interactive`` (sessions kept server-side)
and ``/generate`` (a prompt or token ids in, text and token ids out). Request models with
LMDeploy's field names and defaults, and plain conversion functions onto the chat and
completion requests the gateway already serves. Every count and size is bounded as on the
OpenAI routes.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .openai import LIMITS

__all__ = ["InteractiveRequest", "LMDeployGenerateRequest", "interactive_messages", "interactive_chat_body", "generate_body"]

_Stop = Annotated[str, Field(min_length=1, max_length=LIMITS.max_stop_len)]
_SESSION_ID_MAX = 2**63 - 1


class _Base(BaseModel):
    """Unknown fields are accepted and ignored (LMDeploy clients send engine options we do
    not take, such as ``adapter_name``)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


class _Sampling(_Base):
    model: str = Field("", max_length=256, description="the served model; left out: the default chat model")
    stream: bool = False
    stop: _Stop | list[_Stop] | None = Field(None, description="stop words")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=100_000)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**64 - 1)
    ignore_eos: bool = Field(False, description="not supported: true is refused")
    skip_special_tokens: bool = Field(True, description="special tokens are always left out of the text; false is refused")

    @model_validator(mode="after")
    def _check(self) -> _Sampling:
        if isinstance(self.stop, list) and len(self.stop) > LIMITS.max_stop:
            raise ValueError(f"stop: at most {LIMITS.max_stop} stop words are allowed")
        if self.ignore_eos:
            raise ValueError("ignore_eos: not supported by this server")
        if not self.skip_special_tokens:
            raise ValueError("skip_special_tokens: false is not supported by this server")
        return self

    def sampling(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("top_p", "top_k", "temperature", "repetition_penalty", "min_p", "seed"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.stop:
            out["stop"] = self.stop
        return out


class InteractiveRequest(_Sampling):
    """``POST /v1/chat/interactive`` (LMDeploy's ``GenerateRequest``)."""

    prompt: Annotated[str, Field(max_length=LIMITS.max_text_chars)] | Annotated[list[dict[str, Any]], Field(max_length=LIMITS.max_messages)] = Field(
        description="the new user turn: a string, or chat messages"
    )
    session_id: int = Field(-1, ge=-1, le=_SESSION_ID_MAX, description="the session; -1: a one-off request, no history kept")
    interactive_mode: bool = Field(False, description="true: the history is kept on the server for the next turn; false: the session ends")
    request_output_len: int | None = Field(None, ge=0, le=LIMITS.max_tokens, description="tokens to generate at most")
    max_tokens: int | None = Field(None, ge=1, le=LIMITS.max_tokens, description="the same as request_output_len")
    cancel: bool = Field(False, description="stop the session's running request")


class LMDeployGenerateRequest(_Sampling):
    """``POST /generate`` (LMDeploy's ``GenerateReqInput``): exactly one of ``prompt`` and
    ``input_ids``; the prompt is used as is (no chat template)."""

    session_id: int | None = Field(-1, ge=-1, le=_SESSION_ID_MAX)
    prompt: str | None = Field(None, min_length=1, max_length=LIMITS.max_text_chars)
    input_ids: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(None, min_length=1, max_length=1_000_000)
    max_tokens: int = Field(128, ge=1, le=LIMITS.max_tokens)
    return_logprob: bool | None = Field(None, description="not supported: true is refused")

    @model_validator(mode="after")
    def _one_input(self) -> LMDeployGenerateRequest:
        if (self.prompt is None) == (self.input_ids is None):
            raise ValueError("You must specify exactly one of prompt or input_ids")
        if self.return_logprob:
            raise ValueError("return_logprob: not supported by this server")
        return self


def interactive_messages(req: InteractiveRequest) -> list[dict[str, Any]]:
    """The turn's new messages: a string prompt is one user message."""
    if isinstance(req.prompt, str):
        return [{"role": "user", "content": req.prompt}]
    return [dict(m) for m in req.prompt]


def interactive_chat_body(req: InteractiveRequest, model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat request of one turn: the session's history and the new messages."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True, **req.sampling()}
    limit = req.request_output_len if req.request_output_len is not None else req.max_tokens
    if limit:
        body["max_tokens"] = limit
    return body


def generate_body(req: LMDeployGenerateRequest, model: str) -> dict[str, Any]:
    """The completion request of a ``/generate`` call."""
    prompt: str | list[int] = req.prompt if req.prompt is not None else list(req.input_ids or [])
    return {"model": model, "prompt": prompt, "max_tokens": req.max_tokens, "stream": True, **req.sampling()}
