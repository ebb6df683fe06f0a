"""The Triton backend: chat and completions on a Triton model with TensorRT-LLM's ensemble
interface. Prompts are rendered and counted here; each choice (``n``, prompt lists) is one
streamed Triton request, all run in parallel; stop strings are cut here too, and a choice's
upstream stream is closed when it stops or the client hangs up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ...chat.images import inline_images
from ...chat.media import MediaFetcher
from ...chat.postprocess import postprocess
from ...chat.reasoning import ThinkParser, detect_reasoning_parser, starts_in_reasoning
from ...chat.templates import ChatTemplate
from ...chat.tool_parsers import ToolParser, detect_tool_parser
from ...chat.tools import max_calls, parser_for_request, prepare_tool_messages
from ...errors import BadRequestError, GatewayError, InternalError, ServiceUnavailableError
from ...protocol.worker import (
    DeltaEvent,
    ErrorEvent,
    Event,
    FinishEvent,
    GenerateRequest,
    TokenLogprob,
    ToolSpec,
    UsageEvent,
)
from ...settings import resolve_model_path
from ..base import Backend, BackendSpec
from ..textgen.limits import check_token_ids, completion_budget
from ..textgen.textstream import TextStream
from ..textgen.tokenize import TOKENIZE_CAPABILITIES, Tokenizes
from . import TritonOptions
from .client import HealthWatch, TritonClient
from .request import (
    PRESETS,
    Sampling,
    build_inputs,
    qwen_vl_messages,
    response_logprobs,
    response_text,
    tensor_name,
)
from .tokenizer import Tokenizer, load_tokenizer

__all__ = ["TritonBackend"]

log = logging.getLogger(__name__)

_DEFAULT_CAPACITY = 64
_DEFAULT_MAX_TOKENS = 512  # when neither the request nor a context length says


@dataclass
class _Prompt:
    text: str
    ids: list[int]
    images: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    prompts: list[_Prompt]
    tool_parser: ToolParser | None = None
    reasoning: ThinkParser | None = None


class TritonBackend(Tokenizes, Backend):
    capabilities: frozenset[str] = frozenset({"chat", "completion"}) | TOKENIZE_CAPABILITIES
    options: TritonOptions

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.preset = PRESETS[self.options.preset]
        self.names = dict(self.options.tensor_names)
        self.tok: Tokenizer | None = None
        self.template: ChatTemplate | None = None
        self.client = TritonClient(
            self.options.server_url, self.options.triton_model, self.options.triton_model_version, self.options.upstream_timeout
        )
        self.health = HealthWatch(self.client, self.options.health_interval)
        self.fetcher = MediaFetcher(self.options.media_policy())
        self.end_id: int | None = None

    # ---- life cycle ---------------------------------------------------------------
    def load(self) -> None:
        mc = self.options
        path = resolve_model_path(mc.tokenizer_path) if mc.tokenizer_path else self.spec.model_path
        tok = load_tokenizer(path)
        self.tok = tok
        source = mc.chat_template or tok.chat_template or self.preset.template
        self.template = ChatTemplate(source, bos_token=tok.bos_token, eos_token=tok.eos_token)
        self.tool_parser_name = mc.tool_call_parser or detect_tool_parser(self.template.source)
        self.reasoning_parser_name = mc.reasoning_parser or detect_reasoning_parser(self.template.source)
        end = tok.token_id(self.preset.end_token) if self.preset.end_token else None
        self.end_id = end if end is not None else tok.eos_id
        self.health.start()  # a Triton that is down now makes the worker unhealthy, not absent
        if not self.health.ok:
            log.warning("Triton at %s is not ready yet: %s", self.client.base_url, self.health.reason)

    def close(self) -> None:
        self.health.stop()
        self.client.close()

    @property
    def capacity(self) -> int:
        return self.options.n_parallel or _DEFAULT_CAPACITY

    @property
    def context_length(self) -> int | None:
        return self.options.n_ctx or self.options.max_model_len

    def healthy(self) -> bool:
        return self.tok is not None and self.health.ok

    # ---- tokenize / detokenize (textgen.tokenize.Tokenizes) -------------------------
    def _ready_tok(self) -> Tokenizer:
        if self.tok is None:
            raise ServiceUnavailableError("the tokenizer is not loaded")
        return self.tok

    def _chat_text(
        self, messages: list[dict[str, Any]], tools: ToolSpec | None, parser: ToolParser | None,
        template_kwargs: dict[str, Any], *, add_generation_prompt: bool = True,
    ) -> str:
        tpl = self.template
        assert tpl is not None
        messages = prepare_tool_messages(messages, tools, parser, tpl.source)
        return tpl.render(messages, tools=tools.tools if tools is not None else None,
                          add_generation_prompt=add_generation_prompt, **template_kwargs)

    def _encode_prompt(self, text: str, add_special: bool | None, *, chat: bool) -> list[int]:
        tok, tpl = self._ready_tok(), self.template
        if add_special is None:
            add_special = tok.add_bos and not (chat and tpl is not None and tpl.bos_token and text.startswith(tpl.bos_token))
        return tok.encode(text, add_special=add_special, parse_special=chat)

    def _chat_ids(
        self, messages: list[dict[str, Any]], tools: ToolSpec | None, parser: ToolParser | None,
        template_kwargs: dict[str, Any], *, add_generation_prompt: bool, add_special: bool | None,
    ) -> list[int]:
        if self.preset.images:
            messages = qwen_vl_messages(messages)[0]
        text = self._chat_text(messages, tools, parser, template_kwargs, add_generation_prompt=add_generation_prompt)
        return self._encode_prompt(text, add_special, chat=True)

    def _text_ids(self, text: str, add_special: bool | None) -> list[int]:
        return self._encode_prompt(text, add_special, chat=False)

    def _token_strs(self, ids: list[int]) -> list[str]:
        return self._ready_tok().token_strs(ids)

    def _vocab_size(self) -> int:
        return self._ready_tok().vocab_size

    def _decode_ids(self, ids: list[int]) -> str:
        return self._ready_tok().decode(ids)

    # ---- request checks -------------------------------------------------------------
    def _refuse_unsupported(self, req: GenerateRequest) -> None:
        """What Triton's TensorRT-LLM interface cannot do is a clear 400, never silently ignored."""
        p = req.params
        if req.structured is not None:
            raise BadRequestError(
                "structured output (response_format / guided decoding) needs grammar-constrained decoding, "
                "which a Triton model with TensorRT-LLM's ensemble interface cannot be asked for",
                param="response_format", code="unsupported_structured_output",
            )
        if req.tools is not None and req.tools.enforce:
            raise BadRequestError(
                "tool_choice 'required' or a named function needs constrained decoding, which the triton engine "
                "cannot enforce; use tool_choice 'auto'", param="tool_choice", code="unsupported_tool_choice",
            )
        if p.min_p:
            raise BadRequestError("min_p is not part of TensorRT-LLM's sampling inputs", param="min_p")
        if any(b > -100 for b in p.logit_bias.values()):
            raise BadRequestError(
                "the triton engine can only ban tokens (logit_bias -100, sent as bad_words)", param="logit_bias"
            )
        if p.echo and p.logprobs:
            raise BadRequestError("echo together with logprobs is not supported by the triton engine", param="echo")
        if self.options.max_n is not None and p.n > self.options.max_n:
            raise BadRequestError(f"n must be at most {self.options.max_n} for this model", param="n")

    # ---- request preparation (in a thread) ----------------------------------------
    def _prepare(self, req: GenerateRequest) -> _Plan:
        tok = self._ready_tok()
        plan = _Plan(prompts=[])
        plan.tool_parser, _ = parser_for_request(self.tool_parser_name, req.tools)
        if req.kind == "chat":
            messages, images = req.messages or [], list[str]()
            if self.preset.images:
                messages, images = qwen_vl_messages(messages)
            text = self._chat_text(messages, req.tools, plan.tool_parser, req.chat_template_kwargs)
            plan.prompts.append(_Prompt(text, self._encode_prompt(text, None, chat=True), images))
            if self.reasoning_parser_name:
                plan.reasoning = ThinkParser(open_in_prompt=starts_in_reasoning(text))
            return plan
        for p in req.prompts or []:
            if isinstance(p, str):
                plan.prompts.append(_Prompt(p, self._encode_prompt(p, None, chat=False)))
            else:
                check_token_ids(p, tok.vocab_size, param="prompt")
                plan.prompts.append(_Prompt(tok.decode(list(p)), list(p)))
        return plan

    def _sampling(self, req: GenerateRequest, plan: _Plan) -> Sampling:
        p, tok = req.params, self._ready_tok()
        ctx = self.context_length
        if ctx is not None:
            max_tokens = completion_budget([pr.ids for pr in plan.prompts], req, ctx)
        else:
            if any(not pr.ids for pr in plan.prompts):
                raise BadRequestError("prompt must not be empty", param="messages" if req.kind == "chat" else "prompt")
            max_tokens = p.max_tokens or _DEFAULT_MAX_TOKENS
        stops = [s for s in p.stop if s]
        for s in self.preset.stop_words:
            if s not in stops:
                stops.append(s)
        banned = [tok.decode([t]) for t, b in sorted(p.logit_bias.items()) if b <= -100 and 0 <= t < tok.vocab_size]
        send_end = self.options.send_end_id
        return Sampling(
            max_tokens=max_tokens, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
            repetition_penalty=p.repetition_penalty, presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty, seed=p.seed, logprobs=p.logprobs, stop_words=stops,
            bad_words=[b for b in banned if b], end_id=self.end_id if send_end else None,
            pad_id=(tok.pad_id if tok.pad_id is not None else self.end_id) if send_end else None,
        )

    # ---- generation -------------------------------------------------------------------
    async def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        self._refuse_unsupported(request)
        if not self.healthy():
            raise ServiceUnavailableError(
                f"the Triton server is not ready: {self.health.reason or 'tokenizer not loaded'}", code="triton_unavailable"
            )
        if request.kind == "chat" and request.messages:
            if not self.preset.images:
                _refuse_images(request.messages)
            else:  # Triton never fetches: remote images are inlined here, within the media limits
                request = request.model_copy(update={"messages": await inline_images(request.messages, self.fetcher)})
        plan = await asyncio.to_thread(self._prepare, request)
        events = self._generate(request, plan)
        try:
            async for ev in postprocess(events, plan.tool_parser, plan.reasoning, max_calls(request)):
                yield ev
        finally:
            await events.aclose()

    async def _generate(self, req: GenerateRequest, plan: _Plan) -> AsyncGenerator[Event, None]:
        base = self._sampling(req, plan)
        p = req.params
        queue: asyncio.Queue[Event | GatewayError | None] = asyncio.Queue()
        tasks: list[asyncio.Task[None]] = []
        for pi, prompt in enumerate(plan.prompts):
            for i in range(p.n):
                s = Sampling(**{**base.__dict__, "seed": None if base.seed is None else base.seed + i})
                index = pi * p.n + i
                tasks.append(asyncio.create_task(self._choice(index, prompt, s, queue, echo=p.echo)))
        remaining, completion, started = len(tasks), 0, False
        try:
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                    continue
                if isinstance(item, GatewayError):
                    if not started:
                        raise item
                    yield ErrorEvent(status=item.status, type=item.openai_type, message=item.message,
                                     param=item.param, code=item.code)
                    return
                if isinstance(item, UsageEvent):
                    completion += item.completion_tokens
                    continue
                started = True
                yield item
            yield UsageEvent(prompt_tokens=sum(len(pr.ids) for pr in plan.prompts), completion_tokens=completion)
        finally:
            for t in tasks:
                t.cancel()  # closes each upstream stream: Triton cancels the request
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _choice(
        self, index: int, prompt: _Prompt, s: Sampling, queue: asyncio.Queue[Event | GatewayError | None], *, echo: bool
    ) -> None:
        """One Triton request: its deltas and finish (or an error) into ``queue``, then None."""
        out_name = tensor_name(self.names, "text_output")
        lp_name = tensor_name(self.names, "output_log_probs")
        text = TextStream(s.stop_words)
        tokens, first, reason = 0, True, "stop"
        try:
            if echo:
                queue.put_nowait(DeltaEvent(index=index, text=prompt.text))
            body = build_inputs(self.names, prompt.text, s, prompt.images)
            stream = self.client.generate_stream(body)
            try:
                async for resp in stream:
                    piece = response_text(resp, out_name)
                    if first and piece.startswith(prompt.text):  # a model that returns the prompt too
                        piece = piece[len(prompt.text):]
                    first = False
                    lps = response_logprobs(resp, lp_name) if s.logprobs else None
                    n_tok = len(lps) if lps else (1 if piece else 0)
                    tokens += n_tok
                    out = text.push(piece.encode("utf-8"))
                    entries = _logprob_entries(piece, lps)
                    if out or entries:
                        queue.put_nowait(DeltaEvent(index=index, text=out, logprobs=entries))
                    if text.stopped:
                        break
                    if tokens >= s.max_tokens:
                        reason = "length"
                        break
            finally:
                await stream.aclose()  # at a stop string or max_tokens: Triton stops too
            if not text.stopped:
                tail = text.flush()
                if tail:
                    queue.put_nowait(DeltaEvent(index=index, text=tail))
            queue.put_nowait(FinishEvent(index=index, finish_reason="length" if reason == "length" else "stop"))
            queue.put_nowait(UsageEvent(prompt_tokens=0, completion_tokens=tokens))
        except GatewayError as exc:
            queue.put_nowait(exc)
        except Exception as exc:
            log.exception("triton choice %d failed", index)
            queue.put_nowait(InternalError(f"the triton engine failed: {type(exc).__name__}"))
        finally:
            queue.put_nowait(None)


def _logprob_entries(piece: str, lps: list[float] | None) -> list[TokenLogprob] | None:
    """The sampled tokens' logprobs (TensorRT-LLM returns no alternatives: top_logprobs stay empty)."""
    if not lps:
        return None
    return [TokenLogprob(token=piece if i == 0 else "", logprob=lp, bytes=list(piece.encode()) if i == 0 else [])
            for i, lp in enumerate(lps)]


def _refuse_images(messages: list[dict[str, Any]]) -> None:
    for i, m in enumerate(messages):
        content = m.get("content")
        if isinstance(content, list) and any(part.get("type") == "image_url" for part in content):
            raise BadRequestError(
                "this Triton model takes text only (preset qwen-vl sends images)", param=f"messages[{i}].content",
                code="unsupported_content",
            )
