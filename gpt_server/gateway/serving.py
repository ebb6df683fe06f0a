"""Chat and completion serving: one call to a worker, streamed as SSE or aggregated."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import Response

from ..chat.chunks import ChunkShape, render_batch
from ..chat.grammar_limits import GrammarLimits
from ..errors import GatewayError, TimeoutError_, error_from_body
from ..protocol.openai import CHAT, COMPLETION, ChatCompletionRequest, CompletionRequest
from ..protocol.worker import (
    DeltaEvent,
    ErrorEvent,
    Event,
    FinishEvent,
    TokenLogprob,
    ToolCallDelta,
    UsageEvent,
)
from ..transport.direct import HAND_NOW_HEADER
from ..web.responses import FastJSONResponse
from .convert import (
    chat_logprobs,
    chat_to_generate,
    completion_logprobs,
    completion_to_generate,
    new_id,
    usage_dict,
)
from .direct import HandedSSEResponse
from .metrics import Metrics
from .sse import SSEResponse
from .workers import EventStream, LocalEventStream, WorkerClient

__all__ = ["GenerationService", "ChatRun", "ChoiceResult", "RunTranslator", "raise_error"]

# requests whose body is larger than this are converted in a thread (FastLane parses them
# there too): a chat of many content parts costs ~0.4 s per 18 MiB to convert
_CONVERT_OFF_LOOP_BYTES = 256 * 1024


def _fingerprint(stream: EventStream | LocalEventStream) -> str:
    """The serving replica's fingerprint (``fp_`` + a hash of the model name for a worker of
    an older build that sends none)."""
    t = stream.target
    return t.fingerprint or "fp_" + hashlib.sha256(t.model_name.encode()).hexdigest()[:12]


# a stream is handed to its worker (transport.direct) only when it may run this many tokens: the
# hand-off costs a fixed ~0.6 ms (one more message each way and the worker's set-up, measured on
# instant streams) that the ~0.2–0.3 ms a token it saves pays back within a few tokens of a model,
# but not on an answer capped at a handful of tokens that all come at once
HAND_OFF_MIN_TOKENS = 32


def _pays_to_hand(max_tokens: int | None) -> bool:
    return max_tokens is None or max_tokens >= HAND_OFF_MIN_TOKENS


def _raise(ev: ErrorEvent) -> None:
    raise error_from_body(ev.status, {"error": {"message": ev.message, "param": ev.param, "code": ev.code, "type": ev.type}})


@dataclass
class ChoiceResult:
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    def add_calls(self, deltas: list[ToolCallDelta]) -> None:
        for d in deltas:
            call = self.tool_calls.setdefault(d.index, {"id": d.id, "type": "function", "function": {"name": d.name, "arguments": ""}})
            if d.id:
                call["id"] = d.id
                call["function"]["name"] = d.name
            call["function"]["arguments"] += d.arguments

    def message(self) -> dict[str, Any]:
        text = "".join(self.text)
        calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        msg: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not calls else None,
            "refusal": None,
        }
        if calls:  # OpenAI omits the key when the model called nothing
            msg["tool_calls"] = calls
        if self.reasoning:
            msg["reasoning_content"] = "".join(self.reasoning)
        return msg


@dataclass
class ChatRun:
    """One chat generation started on a worker, for the other client APIs (Anthropic
    Messages, Ollama, Responses …): they build a ``ChatCompletionRequest``, start it with
    ``GenerationService.start_chat`` and render ``batches()`` (streamed) or ``collect()``
    (whole) in their own shapes — tools, structured output, reasoning and limits are the
    chat path's. Always ``aclose()`` (``collect`` does)."""

    service: GenerationService
    stream: EventStream | LocalEventStream
    model: str
    request_id: str
    n: int
    deadline: float
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.stream)

    @property
    def worker_id(self) -> str:
        """The replica serving this run."""
        return self.stream.target.worker_id

    def streamed(
        self, events: AsyncIterator[Any], cls: type[SSEResponse] = SSEResponse, on_close: Callable[[], Any] | None = None, **kw: Any
    ) -> SSEResponse:
        """``events`` (this run, translated) as a streamed response bounded like the chat route's
        (the service's read timeout, the run's deadline); closing it ends the run unless
        ``on_close`` does that itself."""
        return cls(events, timeout=self.service.timeout, deadline=self.deadline, on_close=on_close or self.aclose, **kw)

    def batches(self) -> AsyncIterator[list[Event]]:
        """The worker's events, one list per read, metered; an ``ErrorEvent`` is left in the
        list for the caller to render (``raise_error(ev)`` turns it into the gateway error)."""
        return self.service._batches(self.stream)

    async def translate(self, tr: RunTranslator) -> AsyncIterator[list[Any]]:
        """The run as a client API's stream: ``tr.head()`` goes out with the first read, each
        read of worker events becomes the list of events ``tr`` makes of it (one client write),
        ``tr.tail`` ends it. A worker error ends the stream after the events before it have
        gone out (raised as the gateway error for the stream's error event). Closes the run."""
        head = tr.head()
        batches = self.batches()
        try:
            async for batch in batches:
                out, head = head, []
                for ev in batch:
                    if isinstance(ev, DeltaEvent):
                        tr.on_delta(ev, out)
                    elif isinstance(ev, FinishEvent):
                        tr.on_finish(ev, out)
                    elif isinstance(ev, UsageEvent):
                        tr.on_usage(ev, out)
                    elif isinstance(ev, ErrorEvent):
                        if out:
                            yield out
                        _raise(ev)
                if out:
                    yield out
            out = head
            tr.tail(out)
            if out:
                yield out
        finally:
            await batches.aclose()  # type: ignore[attr-defined]
            await self.aclose()

    async def collect(self) -> tuple[list[ChoiceResult], UsageEvent]:
        """Every choice whole (text, reasoning, tool calls, finish reason) and the usage;
        errors raise ``GatewayError``; the deadline is the request's."""
        return await self.service._collect(self.stream, self.n, self.deadline)

    async def aclose(self) -> None:
        await self.stream.aclose()


class RunTranslator:
    """One client API's streaming shape over a ``ChatRun`` (``ChatRun.translate``): override
    ``head`` (events before the first token), ``on_delta`` / ``on_finish`` / ``on_usage``
    (append the API's events to ``out``) and ``tail`` (the closing events). The finish
    reason and usage are kept for the tail."""

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.usage = UsageEvent(prompt_tokens=0, completion_tokens=0)

    def head(self) -> list[Any]:
        return []

    def on_delta(self, ev: DeltaEvent, out: list[Any]) -> None:
        return None

    def on_finish(self, ev: FinishEvent, out: list[Any]) -> None:
        self.finish_reason = ev.finish_reason

    def on_usage(self, ev: UsageEvent, out: list[Any]) -> None:
        self.usage = ev

    def tail(self, out: list[Any]) -> None:
        return None


def raise_error(ev: ErrorEvent) -> None:
    """Raise the gateway error a worker's error event stands for."""
    _raise(ev)


class GenerationService:
    def __init__(
        self, workers: WorkerClient, *, timeout: float, metrics: Metrics | None = None, grammar_limits: GrammarLimits | None = None
    ) -> None:
        self.workers = workers
        self.timeout = timeout
        self.metrics = metrics
        self.grammar_limits = grammar_limits or GrammarLimits()

    def _batches(self, stream: EventStream | LocalEventStream) -> AsyncIterator[list[Event]]:
        """The worker's events, a list per network read, metered."""
        if self.metrics is None:
            return stream.batches()
        return self.metrics.metered(stream.batches(), stream.target.model_name, stream.target.worker_id, start=stream.sent)

    async def _collect(
        self, stream: EventStream | LocalEventStream, n_choices: int, deadline: float
    ) -> tuple[list[ChoiceResult], UsageEvent]:
        choices = [ChoiceResult() for _ in range(n_choices)]
        usage = UsageEvent(prompt_tokens=0, completion_tokens=0)
        batches = self._batches(stream)
        try:
            async with asyncio.timeout_at(deadline):
                async for batch in batches:
                    for ev in batch:
                        if isinstance(ev, DeltaEvent):
                            c = choices[ev.index]
                            c.text.append(ev.text)
                            if ev.reasoning:
                                c.reasoning.append(ev.reasoning)
                            if ev.tool_calls:
                                c.add_calls(ev.tool_calls)
                            if ev.logprobs:
                                c.logprobs.extend(ev.logprobs)
                        elif isinstance(ev, FinishEvent):
                            choices[ev.index].finish_reason = ev.finish_reason
                        elif isinstance(ev, UsageEvent):
                            usage = ev
                        elif isinstance(ev, ErrorEvent):
                            _raise(ev)
        except TimeoutError:
            raise TimeoutError_(f"the request did not finish within {self.timeout:g} seconds") from None
        finally:
            await batches.aclose()  # type: ignore[attr-defined]
            await stream.aclose()
        return choices, usage

    async def _chunk_batches(self, stream: EventStream | LocalEventStream, convert: Callable[[Event], list[dict[str, Any]]]) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The chunks of each batch of worker events (one client write per batch). An error
        event ends the stream after the chunks before it have gone out."""
        batches = self._batches(stream)
        try:
            async for batch in batches:
                out, failed = render_batch(batch, convert)
                if out:
                    yield out
                if failed is not None:
                    _raise(failed)
        finally:
            await batches.aclose()  # type: ignore[attr-defined]
            await stream.aclose()

    # ---- chat ---------------------------------------------------------------
    async def start_chat(
        self, req: ChatCompletionRequest, body_bytes: int = 0, id_prefix: str = "chatcmpl", affinity: str | None = None,
        direct: bool = False, whole: bool = False,
    ) -> ChatRun:
        """Resolve the model, convert and dispatch ``req``: the started generation.
        ``body_bytes``: the size of the request body (large ones are converted in a thread);
        ``affinity``: a key whose requests stay on one replica (a session, a response chain);
        ``direct``: a stream the worker may write to the client (a hand-off, ``transport.direct``);
        ``whole``: the run will be ``collect``ed, so the worker sends each choice whole at the
        end (``GenerateRequest.whole``), not an event per token."""
        deadline = self.workers.deadline()  # one for dispatch, retries and the whole answer
        req.model = await self.workers.resolve(req.model, CHAT)
        rid = new_id(id_prefix)
        if body_bytes > _CONVERT_OFF_LOOP_BYTES:
            gen = await asyncio.to_thread(chat_to_generate, req, rid, self.grammar_limits)
        else:
            gen = chat_to_generate(req, rid, self.grammar_limits)
        gen.whole = whole
        stream = await self.workers.open(req.model, gen, deadline=deadline, affinity=affinity, direct=direct)
        return ChatRun(self, stream, req.model, rid, req.n, deadline)

    async def chat(self, req: ChatCompletionRequest, body_bytes: int = 0, client: Any = None) -> Response:
        """``body_bytes``: the size of the request body (large ones are converted in a thread);
        ``client``: the client connection's transport where a worker on this host may write
        the stream to it (``transport.direct.client_transport``)."""
        direct = client is not None and req.stream and _pays_to_hand(req.max_completion_tokens or req.max_tokens)
        run = await self.start_chat(req, body_bytes, direct=direct, whole=not req.stream)
        stream, rid, deadline, created = run.stream, run.request_id, run.deadline, run.created
        if req.stream:
            shape = ChunkShape(
                kind="chat", id=rid, created=created, model=req.model, system_fingerprint=_fingerprint(stream), n=req.n,
                include_usage=bool(req.stream_options and req.stream_options.include_usage), logprobs=bool(req.logprobs),
            )
            return self._streamed(stream, shape, deadline, client)
        choices, usage = await self._collect(stream, req.n, deadline)
        body = {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": req.model,
            "system_fingerprint": _fingerprint(stream),
            "choices": [
                {
                    "index": i,
                    "message": c.message(),
                    "logprobs": chat_logprobs(c.logprobs) if req.logprobs else None,
                    "finish_reason": c.finish_reason or "stop",
                }
                for i, c in enumerate(choices)
            ],
            "usage": usage_dict(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens),
        }
        return FastJSONResponse(body)

    def _streamed(self, stream: EventStream | LocalEventStream, shape: ChunkShape, deadline: float, client: Any) -> Response:
        """The stream as SSE: written by the worker where it was asked for a hand-off, else relayed."""
        direct = stream.direct
        if direct is None or client is None:
            return SSEResponse(self._chunks(stream, shape), timeout=self.timeout, deadline=deadline, on_close=stream.aclose, hold_head=True)
        path, token = direct
        model, metrics = stream.target.model_name, self.metrics

        def handed() -> None:
            if metrics is not None:
                metrics.handed.labels(model).inc()

        return HandedSSEResponse(
            self._batches(stream), handoff=self.workers.handoff, socket_path=path, token=token, transport=client, shape=shape,
            on_handed=handed, timeout=self.timeout, deadline=deadline, on_close=stream.aclose,
            now=isinstance(stream, EventStream) and HAND_NOW_HEADER in stream.headers,
        )

    async def _chunks(self, stream: EventStream | LocalEventStream, shape: ChunkShape) -> AsyncIterator[list[dict[str, Any]]]:
        """The stream's chunks, a list per batch of worker events; a chat's role chunks go out
        with the first tokens (the worker answers with them)."""
        head = shape.head()
        events = self._chunk_batches(stream, shape.chunks)
        try:
            async for out in events:
                if head:
                    out, head = head + out, []
                yield out
        except GatewayError:
            if head:
                yield head
            raise
        else:
            if head:
                yield head
        finally:
            await events.aclose()

    # ---- completions ----------------------------------------------------------
    async def start_completion(
        self, req: CompletionRequest, body_bytes: int = 0, id_prefix: str = "cmpl", affinity: str | None = None,
        direct: bool = False, whole: bool = False,
    ) -> ChatRun:
        """As ``start_chat``, for a completion (the prompt as is, no chat template); the
        run's choices are prompts × n."""
        deadline = self.workers.deadline()
        req.model = await self.workers.resolve(req.model, COMPLETION)
        rid = new_id(id_prefix)
        if body_bytes > _CONVERT_OFF_LOOP_BYTES:
            gen = await asyncio.to_thread(completion_to_generate, req, rid, self.grammar_limits)
        else:
            gen = completion_to_generate(req, rid, self.grammar_limits)
        gen.whole = whole
        stream = await self.workers.open(req.model, gen, deadline=deadline, affinity=affinity, direct=direct)
        return ChatRun(self, stream, req.model, rid, len(gen.prompts or []) * req.n, deadline)

    async def completion(self, req: CompletionRequest, body_bytes: int = 0, client: Any = None) -> Response:
        """As ``chat``."""
        direct = client is not None and req.stream and _pays_to_hand(req.max_tokens)
        run = await self.start_completion(req, body_bytes, direct=direct, whole=not req.stream)
        stream, rid, deadline, created, n_choices = run.stream, run.request_id, run.deadline, run.created, run.n
        if req.stream:
            shape = ChunkShape(
                kind="completion", id=rid, created=created, model=req.model, system_fingerprint=_fingerprint(stream), n=n_choices,
                include_usage=bool(req.stream_options and req.stream_options.include_usage), logprobs=req.logprobs is not None,
            )
            return self._streamed(stream, shape, deadline, client)
        choices, usage = await self._collect(stream, n_choices, deadline)
        body = {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": req.model,
            "system_fingerprint": _fingerprint(stream),
            "choices": [
                {
                    "index": i,
                    "text": "".join(c.text),
                    "logprobs": completion_logprobs(c.logprobs, 0) if req.logprobs is not None else None,
                    "finish_reason": c.finish_reason or "stop",
                }
                for i, c in enumerate(choices)
            ],
            "usage": usage_dict(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens),
        }
        return FastJSONResponse(body)
