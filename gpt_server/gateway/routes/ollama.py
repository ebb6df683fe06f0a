"""Ollama's native API, translated onto the chat, completion and embedding paths.

``/api/chat``, ``/api/generate`` (NDJSON streams by default), ``/api/embed`` and the legacy
``/api/embeddings``, ``/api/tags``, ``/api/show``, ``/api/ps``, ``/api/version``. Behind
the same API-key guard as ``/v1`` (Ollama clients send ``Authorization: Bearer``). Errors
are Ollama's ``{"error": "..."}`` with the HTTP status (the guard's 401 keeps the OpenAI
shape); a stream that fails after its first line ends with an ``{"error": ...}`` line.

Model names are taken as Ollama clients send them: ``smollm2:latest`` is ``smollm2``;
an unknown name is 404 ``model 'x' not found`` (unless a catch-all alias ``*`` serves it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from ... import __version__
from ...errors import BadRequestError, GatewayError, NotFoundError, UnsupportedMediaTypeError
from ...protocol.embeddings import EMBED, EmbeddingRequest, embed_payload
from ...protocol.ollama import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaShowRequest,
    chat_body,
    created_at,
    digest,
    done_reason,
    generate_chat_body,
    generate_raw_body,
    iso,
    model_tag,
    tool_calls_out,
)
from ...protocol.openai import CHAT, COMPLETION, ChatCompletionRequest, CompletionRequest
from ...protocol.worker import DeltaEvent, FinishEvent, ModelEntryInfo, UsageEvent
from ...web.error_handlers import validation_message
from ...web.limits import body_bytes
from ...web.openapi import request_body
from ...web.responses import FastJSONResponse
from ..fastlane import declared_json
from ..invoke import call_json
from ..serving import ChatRun, ChoiceResult, RunTranslator
from ..sse import SSEResponse

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["ollama"])

M = TypeVar("M", bound=BaseModel)
_PARSE_OFF_LOOP_BYTES = 256 * 1024


def _body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses ``model`` itself (so errors keep
    Ollama's shape): documented in /openapi.json, and fuzzed from it."""
    return request_body(model)


class NDJSONResponse(SSEResponse):
    """A stream of JSON lines (Ollama's streaming): the SSE machinery (hang-up cancels,
    deadline, error at the end), one ``{...}\\n`` per event, no keep-alive, no done marker."""

    media_type = "application/x-ndjson"
    encode = staticmethod(lambda event: orjson.dumps(event) + b"\n")

    def __init__(self, lines: AsyncIterator[list[Any]], **kw: Any) -> None:
        super().__init__(lines, keepalive=1e9, done=None, error_event=lambda exc: {"error": exc.message}, **kw)


def _ollama_errors(endpoint: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Errors as Ollama's ``{"error": "message"}`` with their status."""

    @wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except GatewayError as exc:
            return FastJSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers or None)

    return wrapper


def _validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequestError(validation_message(list(exc.errors()))[0]) from None


async def _parse(request: Request, model: type[M]) -> M:
    """The body as ``model``; declared JSON as on the /v1 routes (FastLane), so a web page
    cannot post here without a CORS preflight."""
    if not declared_json(request):
        raise UnsupportedMediaTypeError("send the body as JSON, with the header 'Content-Type: application/json'")
    raw = await request.body()
    if not raw:
        raise BadRequestError("missing request body")

    def parse() -> M:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequestError("invalid JSON in the request body") from None
        return _validate(model, data)

    return await asyncio.to_thread(parse) if len(raw) > _PARSE_OFF_LOOP_BYTES else parse()


async def _models(request: Request) -> list[ModelEntryInfo]:
    return await request.app.state.controller.models()


async def _model(request: Request, name: str, capability: str | None) -> str:
    """Our id for an Ollama model name: itself, itself without ``:latest``, or the catch-all's."""
    ids = {m.id for m in await _models(request)}
    for cand in (name, name.removesuffix(":latest")):
        if cand in ids:
            return cand
    target = await request.app.state.controller.resolve(name, capability)
    if target != name:
        return target
    raise NotFoundError(f"model '{name}' not found")


class _Clock:
    """Ollama's durations (nanoseconds): total, prompt evaluation (until the first token) and
    generation; load is 0 (models stay loaded)."""

    def __init__(self) -> None:
        self.start = time.perf_counter_ns()
        self.first: int | None = None

    def tick(self) -> None:
        if self.first is None:
            self.first = time.perf_counter_ns()

    def stats(self, usage: UsageEvent | None) -> dict[str, int]:
        now = time.perf_counter_ns()
        first = self.first or now
        return {
            "total_duration": now - self.start,
            "load_duration": 0,
            "prompt_eval_count": usage.prompt_tokens if usage else 0,
            "prompt_eval_duration": first - self.start,
            "eval_count": usage.completion_tokens if usage else 0,
            "eval_duration": now - first,
        }


def _piece(name: str, chat: bool, text: str, thinking: str | None = None, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": name, "created_at": created_at()}
    if chat:
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            msg["thinking"] = thinking
        if calls:
            msg["tool_calls"] = calls
        out["message"] = msg
    else:
        out["response"] = text
        if thinking:
            out["thinking"] = thinking
    return out


class _Lines(RunTranslator):
    """The run's events as Ollama stream lines: a line per read of text/thinking, the tool
    calls whole in one line when the choice ends, then the ``done`` line with the counts."""

    def __init__(self, name: str, chat: bool, clock: _Clock) -> None:
        super().__init__()
        self.name, self.chat, self.clock = name, chat, clock
        self.calls = ChoiceResult()

    def on_delta(self, ev: DeltaEvent, out: list[Any]) -> None:
        self.clock.tick()
        if ev.tool_calls:
            self.calls.add_calls(ev.tool_calls)
        if ev.text or ev.reasoning:
            out.append({**_piece(self.name, self.chat, ev.text, ev.reasoning), "done": False})

    def on_finish(self, ev: FinishEvent, out: list[Any]) -> None:
        super().on_finish(ev, out)
        if self.calls.tool_calls:
            found = tool_calls_out([self.calls.tool_calls[i] for i in sorted(self.calls.tool_calls)])
            out.append({**_piece(self.name, self.chat, "", calls=found), "done": False})

    def tail(self, out: list[Any]) -> None:
        out.append({**_piece(self.name, self.chat, ""), "done": True, "done_reason": done_reason(self.finish_reason), **self.clock.stats(self.usage)})


async def _answer(request: Request, run: ChatRun, name: str, chat: bool, stream: bool, clock: _Clock) -> Response:
    if stream:
        return run.streamed(run.translate(_Lines(name, chat, clock)), NDJSONResponse)
    choices, usage = await run.collect()
    c = choices[0]
    clock.tick()
    calls = tool_calls_out([c.tool_calls[i] for i in sorted(c.tool_calls)]) if c.tool_calls else None
    body = _piece(name, chat, "".join(c.text), "".join(c.reasoning) or None, calls)
    return FastJSONResponse({**body, "done": True, "done_reason": done_reason(c.finish_reason), **clock.stats(usage)})


@router.post("/chat", openapi_extra=_body(OllamaChatRequest))
@_ollama_errors
async def chat(request: Request) -> Response:
    req = await _parse(request, OllamaChatRequest)
    model = await _model(request, req.model, CHAT)
    if not req.messages:  # Ollama: an empty chat loads the model
        return FastJSONResponse({**_piece(req.model, True, ""), "done": True, "done_reason": "load"})
    creq = _validate(ChatCompletionRequest, chat_body(req, model))
    clock = _Clock()
    run = await request.app.state.generation.start_chat(creq, body_bytes(request), whole=not req.stream)
    return await _answer(request, run, req.model, True, req.stream, clock)


@router.post("/generate", openapi_extra=_body(OllamaGenerateRequest))
@_ollama_errors
async def generate(request: Request) -> Response:
    req = await _parse(request, OllamaGenerateRequest)
    if req.suffix:
        raise BadRequestError("suffix (fill-in-the-middle) is not supported")
    model = await _model(request, req.model, COMPLETION if req.raw else CHAT)
    if not req.prompt and not req.images:  # Ollama: an empty prompt loads the model
        return FastJSONResponse({**_piece(req.model, False, ""), "done": True, "done_reason": "load"})
    gen = request.app.state.generation
    clock = _Clock()
    if req.raw:
        if req.images:
            raise BadRequestError("images need the model's template: not with raw")
        if req.format:
            raise BadRequestError("format is not supported with raw")
        run = await gen.start_completion(_validate(CompletionRequest, generate_raw_body(req, model)), body_bytes(request), whole=not req.stream)
    else:
        run = await gen.start_chat(_validate(ChatCompletionRequest, generate_chat_body(req, model)), body_bytes(request), whole=not req.stream)
    return await _answer(request, run, req.model, False, req.stream, clock)


async def _embed(request: Request, model: str, inputs: str | list[str], dimensions: int | None) -> tuple[list[Any], int]:
    payload = embed_payload(_validate(EmbeddingRequest, {"model": model, "input": inputs, "dimensions": dimensions}))
    result = await call_json(request, model, EMBED, payload)
    vectors = [d["embedding"] for d in sorted(result["data"], key=lambda d: d["index"])]
    return vectors, int((result.get("usage") or {}).get("prompt_tokens", 0))


@router.post("/embed", openapi_extra=_body(OllamaEmbedRequest))
@_ollama_errors
async def embed(request: Request) -> Response:
    req = await _parse(request, OllamaEmbedRequest)
    model = await _model(request, req.model, EMBED)
    start = time.perf_counter_ns()
    vectors: list[Any] = []
    tokens = 0
    if req.input == [] or req.input == "":
        vectors, tokens = [], 0
    else:
        vectors, tokens = await _embed(request, model, req.input, req.dimensions)
    return FastJSONResponse(
        {
            "model": req.model,
            "embeddings": vectors,
            "total_duration": time.perf_counter_ns() - start,
            "load_duration": 0,
            "prompt_eval_count": tokens,
        }
    )


@router.post("/embeddings", openapi_extra=_body(OllamaEmbeddingsRequest))
@_ollama_errors
async def embeddings(request: Request) -> Response:
    req = await _parse(request, OllamaEmbeddingsRequest)
    model = await _model(request, req.model, EMBED)
    if not req.prompt:
        return FastJSONResponse({"embedding": []})
    vectors, _ = await _embed(request, model, req.prompt, None)
    return FastJSONResponse({"embedding": vectors[0]})


# ---- model listings ---------------------------------------------------------------------

_FORMATS = {"llama_cpp": "gguf"}


def _details(m: ModelEntryInfo) -> dict[str, Any]:
    """What we know of a model in Ollama's ``details``; the rest empty (we do not parse weights)."""
    return {
        "parent_model": "",
        "format": "",
        "family": m.model_kind,
        "families": [m.model_kind],
        "parameter_size": "",
        "quantization_level": "",
    }


def _capabilities(m: ModelEntryInfo) -> list[str]:
    caps = set(m.capabilities)
    out = []
    if CHAT in caps or COMPLETION in caps:
        out += ["completion", "tools"]
    if EMBED in caps:
        out.append("embedding")
    if "embed_image" in caps or "vision" in caps:
        out.append("vision")
    return out


def _entry(m: ModelEntryInfo) -> dict[str, Any]:
    """A model as ``/api/tags`` lists it. ``size`` is 0 and ``digest`` a hash of the id:
    the server serves models, it does not hold Ollama blobs."""
    name = model_tag(m.id)
    return {"name": name, "model": name, "modified_at": iso(m.created), "size": 0, "digest": digest(m.id), "details": _details(m)}


@router.get("/tags")
@_ollama_errors
async def tags(request: Request) -> Response:
    return FastJSONResponse({"models": [_entry(m) for m in await _models(request)]})


@router.get("/ps")
@_ollama_errors
async def ps(request: Request) -> Response:
    """The models with a live worker (all listed ones: a served model stays loaded)."""
    out = []
    for m in await _models(request):
        if m.workers > 0:
            e = _entry(m)
            del e["modified_at"]
            out.append({**e, "expires_at": "9999-12-31T23:59:59Z", "size_vram": 0, "context_length": m.context_length or 0})
    return FastJSONResponse({"models": out})


@router.post("/show", openapi_extra=_body(OllamaShowRequest))
@_ollama_errors
async def show(request: Request) -> Response:
    req = await _parse(request, OllamaShowRequest)
    name = req.model or req.name
    if not name:
        raise BadRequestError("model is required")
    model = await _model(request, name, None)
    entry = next((m for m in await _models(request) if m.id == model), None)
    if entry is None:
        raise NotFoundError(f"model '{name}' not found")
    info: dict[str, Any] = {"general.architecture": entry.model_kind, "general.basename": entry.model_name}
    if entry.context_length:
        info[f"{entry.model_kind}.context_length"] = entry.context_length
    return FastJSONResponse(
        {
            "modelfile": f"# served by gpt-server\nFROM {entry.model_name}\n",
            "parameters": "",
            "template": "{{ .Prompt }}",  # the model's own chat template applies; not exported
            "details": _details(entry),
            "model_info": info,
            "capabilities": _capabilities(entry),
            "modified_at": iso(entry.created),
        }
    )


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}
