"""LMDeploy api_server's routes, translated onto the chat and completion paths.

``POST /v1/chat/interactive``: LMDeploy's interactive sessions. With ``interactive_mode:
true`` the session's history is kept here (``app.state.sessions``: per API key, bounded,
expiring) and the next turn sends only its new prompt; ``interactive_mode: false`` serves
the turn and ends the session; ``cancel: true`` stops the session's running turn. A
session's turns go to the replica that served its last one (dispatch affinity), so an
engine that reuses a cached prefix (llama.cpp's slots) prefills only the new tokens. The
answer: ``text``, ``tokens``, ``input_tokens``, ``history_tokens``, ``finish_reason``;
streamed as LMDeploy streams it, one JSON object per line.

``POST /generate``: a prompt (as is, no chat template) or token ids in; ``text``,
``output_ids`` and ``meta_info`` out, streamed as ``data:`` events ending with ``[DONE]``.
The worker streams text, so ``output_ids`` are the generated text's tokenization; streamed,
they come whole with the last event (the chunks' ids concatenated are the output's ids).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from ...errors import BadRequestError, GatewayError
from ...protocol.lmdeploy import (
    InteractiveRequest,
    LMDeployGenerateRequest,
    generate_body,
    interactive_chat_body,
    interactive_messages,
)
from ...protocol.openai import CHAT, ChatCompletionRequest, CompletionRequest
from ...protocol.tokenize import TOKENIZE, TokenizePayload
from ...protocol.tritonserver import TritonGenerateRequest
from ...protocol.worker import DeltaEvent
from ...web.error_handlers import validation_message
from ...web.limits import body_bytes
from ...web.openapi import request_body
from ...web.responses import FastJSONResponse
from ..invoke import call_json
from ..response_store import owner_of
from ..serving import ChatRun, RunTranslator
from ..session_store import Session, SessionStore
from ..sse import SSEResponse
from .tritonserver import TRITON_ONLY_KEYS, triton_generate

__all__ = ["router"]

router = APIRouter(tags=["lmdeploy"])

_FINISH = {"content_filter": "stop"}


class _LinesResponse(SSEResponse):
    """LMDeploy's interactive stream: one JSON object and a newline per event (its media
    type says event-stream); no keep-alive, no done marker; an error ends it with an
    ``{"error": {...}}`` line."""

    encode = staticmethod(lambda event: orjson.dumps(event) + b"\n")

    def __init__(self, lines: AsyncIterator[list[Any]], **kw: Any) -> None:
        super().__init__(lines, keepalive=1e9, done=None, **kw)


def _validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors()))
        raise BadRequestError(message, param=param) from None


def _answer(text: str, tokens: int, input_tokens: int, history_tokens: int, finish: str | None) -> dict[str, Any]:
    reason = _FINISH.get(finish, finish) if finish else None
    return {"text": text, "tokens": tokens, "input_tokens": input_tokens, "history_tokens": history_tokens, "finish_reason": reason}


class _InteractiveStream(RunTranslator):
    """A line per read of text, then the closing line with the counts and finish reason."""

    def __init__(self, history_tokens: int) -> None:
        super().__init__()
        self.history_tokens = history_tokens
        self.text: list[str] = []
        self.pieces = 0

    def on_delta(self, ev: DeltaEvent, out: list[Any]) -> None:
        if ev.text:
            self.text.append(ev.text)
            self.pieces += 1
            out.append(_answer(ev.text, self.pieces, 0, self.history_tokens, None))

    def tail(self, out: list[Any]) -> None:
        u = self.usage
        out.append(_answer("", u.completion_tokens, max(0, u.prompt_tokens - self.history_tokens), self.history_tokens, self.finish_reason or "stop"))


def _sessions(request: Request) -> SessionStore:
    store: SessionStore = request.app.state.sessions
    return store


class _Turn:
    """Settles a session's turn exactly once: finished with its answer, else abandoned (also
    when the stream never started: an async generator closed before its first step runs no
    ``finally``, so the response's ``on_close`` settles it too)."""

    def __init__(self, run: ChatRun, store: SessionStore, s: Session | None) -> None:
        self.run, self.store, self.s = run, store, s
        self.settled = s is None

    def finish(self, history: list[dict[str, Any]], tokens: int, keep: bool) -> None:
        if not self.settled and self.s is not None:
            self.settled = True
            self.store.finish(self.s, history, tokens, keep)

    def abandon(self) -> None:
        if not self.settled and self.s is not None:
            self.settled = True
            self.store.abandon(self.s)

    async def close(self) -> None:
        try:
            await self.run.aclose()
        finally:
            self.abandon()


async def _session_lines(run: ChatRun, tr: _InteractiveStream, turn: _Turn, messages: list[dict[str, Any]], keep: bool) -> AsyncIterator[list[Any]]:
    done = False
    try:
        async for out in run.translate(tr):
            yield out
        done = True
    finally:
        if done:
            history = messages + [{"role": "assistant", "content": "".join(tr.text)}]
            turn.finish(history, tr.usage.prompt_tokens + tr.usage.completion_tokens, keep)
        else:
            turn.abandon()


@router.post("/v1/chat/interactive")
async def chat_interactive(body: InteractiveRequest, request: Request) -> Response:
    """A turn of an LMDeploy interactive session (see the module's notes)."""
    store, owner = _sessions(request), owner_of(request)
    if body.cancel:
        if body.session_id == -1:
            raise BadRequestError("please set a session_id to cancel a request", param="session_id")
        s = store.get(owner, body.session_id)
        if s is not None and s.cancel is not None:
            await s.cancel()
        return FastJSONResponse(_answer("", 0, 0, 0, "stop"))
    if not body.interactive_mode and body.prompt == "" and body.request_output_len == 0:
        store.end(owner, body.session_id)  # LMDeploy's way to end a session
        return FastJSONResponse(_answer("", 0, 0, 0, "stop"))
    s = store.begin(owner, body.session_id) if body.session_id != -1 else None
    try:
        messages = (list(s.messages) if s else []) + interactive_messages(body)
        creq = _validate(ChatCompletionRequest, interactive_chat_body(body, body.model, messages))
        run = await request.app.state.generation.start_chat(
            creq, body_bytes(request), id_prefix="interactive", affinity=s.affinity if s else None, whole=not body.stream
        )
    except BaseException:
        if s is not None:
            store.abandon(s)
        raise
    if s is not None:
        s.cancel = run.aclose
    tr = _InteractiveStream(s.history_tokens if s else 0)
    keep = body.interactive_mode
    turn = _Turn(run, store, s)
    lines = _session_lines(run, tr, turn, messages, keep)
    if body.stream:
        return run.streamed(lines, _LinesResponse, on_close=turn.close)
    last: dict[str, Any] = {}
    try:
        async with asyncio.timeout_at(run.deadline):
            async for out in lines:  # the same events, gathered
                last = out[-1]
    except TimeoutError:
        raise request.app.state.workers.timed_out() from None
    finally:
        await lines.aclose()  # type: ignore[attr-defined]
        turn.abandon()  # settled already unless the gathering stopped early
    return FastJSONResponse({**last, "text": "".join(tr.text)})


class _GenerateStream(RunTranslator):
    """``data:`` events of text; the last carries the output ids and the counts."""

    def __init__(self, request: Request, model: str) -> None:
        super().__init__()
        self.request, self.model = request, model
        self.text: list[str] = []

    def on_delta(self, ev: DeltaEvent, out: list[Any]) -> None:
        if ev.text:
            self.text.append(ev.text)
            out.append({"text": ev.text, "output_ids": [], "meta_info": _meta(None, None, None)})


def _meta(prompt: int | None, completion: int | None, finish: str | None) -> dict[str, Any]:
    reason = _FINISH.get(finish, finish) if finish else None
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "finish_reason": {"type": reason} if reason else None,
        "output_token_logprobs": None,
        "routed_experts": None,
    }


async def _output_ids(request: Request, model: str, text: str) -> list[int]:
    if not text:
        return []
    result = await call_json(request, model, TOKENIZE, TokenizePayload(prompt=text, add_special_tokens=False))
    return [int(t) for t in result.get("tokens", [])]


async def _generate_events(run: ChatRun, tr: _GenerateStream) -> AsyncIterator[list[Any]]:
    async for out in run.translate(tr):
        yield out
    u = tr.usage
    ids = await _output_ids(tr.request, tr.model, "".join(tr.text))
    yield [{"text": "", "output_ids": ids, "meta_info": _meta(u.prompt_tokens, u.completion_tokens, tr.finish_reason or "stop")}]


_GENERATE_BODY = request_body(LMDeployGenerateRequest, TritonGenerateRequest)


@router.post("/generate", openapi_extra=_GENERATE_BODY)
async def generate(request: Request) -> Response:
    """``/generate`` in either shape: LMDeploy's (``prompt`` or ``input_ids`` → ``text``,
    ``output_ids``, ``meta_info``) or fastapi_tritonserver's (``prompt``, ``max_output_len``,
    ``num_beams``, ``images``, ``uuid`` → ``text``, ``id``). A body with a field only the latter
    has, or a bare ``prompt`` for a model served by the triton engine, takes the latter."""
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise BadRequestError("the body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequestError("the body must be a JSON object")
    if TRITON_ONLY_KEYS & data.keys() or (not _LMDEPLOY_ONLY_KEYS & data.keys() and await _served_by_triton(request, data)):
        return await triton_generate(_validate(TritonGenerateRequest, data), request)
    return await _lmdeploy_generate(_validate(LMDeployGenerateRequest, data), request)


_LMDEPLOY_ONLY_KEYS = frozenset({"input_ids", "max_tokens", "return_logprob", "session_id", "stop", "skip_special_tokens"})


async def _served_by_triton(request: Request, data: dict[str, Any]) -> bool:
    """Whether the model the body names (or the default chat model) runs on the triton engine."""
    cfg = getattr(request.app.state, "config", None)
    name = data.get("model") or ""
    if cfg is None or not isinstance(name, str):
        return False
    try:
        resolved = await request.app.state.controller.resolve(name, CHAT)
    except GatewayError:
        return False  # the chosen path reports it
    entry = cfg.model(resolved)
    return entry is not None and entry.work_mode == "triton"


async def _lmdeploy_generate(body: LMDeployGenerateRequest, request: Request) -> Response:
    """LMDeploy's ``/generate`` (see the module's notes)."""
    creq = _validate(CompletionRequest, generate_body(body, body.model))
    service = request.app.state.generation
    run = await service.start_completion(creq, body_bytes(request), id_prefix="generate", whole=not body.stream)
    tr = _GenerateStream(request, run.model)
    if body.stream:
        return run.streamed(_generate_events(run, tr))
    choices, usage = await run.collect()
    text = "".join(choices[0].text)
    ids = await _output_ids(request, run.model, text)
    return FastJSONResponse({"text": text, "output_ids": ids, "meta_info": _meta(usage.prompt_tokens, usage.completion_tokens, choices[0].finish_reason or "stop")})
