"""The transformers backend (``work_mode: hf``): chat/completions, vision and LoRA on the batched engine."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ...chat.images import inline_images
from ...chat.media import MediaFetcher
from ...chat.postprocess import passes_through, postprocess
from ...chat.reasoning import ThinkParser, detect_reasoning_parser, starts_in_reasoning
from ...chat.structured import GrammarFactory
from ...chat.templates import ChatTemplate
from ...chat.tool_parsers import ToolParser, detect_tool_parser
from ...chat.tools import max_calls, parser_for_request, prepare_tool_messages
from ...errors import ServiceUnavailableError
from ...protocol.kinds import Capability
from ...protocol.tokenize import TOKENIZE, TokenizePayload
from ...protocol.worker import (
    Event,
    GenerateRequest,
    ToolSpec,
)
from ..base import Backend, BackendSpec, InvokeResult, payload_as
from ..devices import torch_on_gpu
from ..textgen.limits import check_sampling, check_token_ids, completion_budget
from ..textgen.sequences import stream_sequences
from ..textgen.tokenize import TOKENIZE_CAPABILITIES, Tokenizes
from . import HFOptions
from .engine import HFEngine, Sequence
from .loading import LoadedModel, load_model
from .vision import render_vision, vision_messages

__all__ = ["HFBackend"]

log = logging.getLogger(__name__)

_DEFAULT_PARALLEL = 4
# detokenising more ids than this runs in a thread


@dataclass
class _Plan:
    """How one request is decoded and parsed."""

    prompts: list[list[int]] = field(default_factory=list)
    extra: dict[str, Any] | None = None  # vision processor tensors
    tool_parser: ToolParser | None = None
    reasoning: ThinkParser | None = None
    grammar: Any = None


class HFBackend(Tokenizes, Backend):
    capabilities: frozenset[str] = frozenset({"chat", "completion"}) | TOKENIZE_CAPABILITIES
    options: HFOptions

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        mc = self.options
        self.adapters: dict[str, str] = dict(mc.lora or {})
        self.engine: HFEngine | None = None
        self.loaded: LoadedModel | None = None
        self.template: ChatTemplate | None = None
        self.media = mc.media_policy()
        self.fetcher = MediaFetcher(self.media)

    @property
    def extra_model_names(self) -> list[str]:
        """LoRA adapters are served under their own model names."""
        return list(self.adapters)

    def load(self) -> None:
        mc = self.options
        threads = mc.n_threads or self.spec.n_threads
        self.loaded = lm = load_model(self.spec.model_path, mc, torch_on_gpu(self.spec), threads)
        self.engine = HFEngine(
            lm.model,
            lm.tokens,
            max_active=mc.n_parallel or _DEFAULT_PARALLEL,
            n_ctx=lm.n_ctx,
            set_adapter=lm.set_adapter,
            prefix_cache_bytes=mc.prefix_cache_mb << 20,
        )
        tok = lm.tokenizer
        self.template = ChatTemplate(
            mc.chat_template or lm.chat_template, bos_token=tok.bos_token or "", eos_token=tok.eos_token or ""
        )
        self.tool_parser_name = mc.tool_call_parser or detect_tool_parser(self.template.source)
        self.reasoning_parser_name = mc.reasoning_parser or detect_reasoning_parser(self.template.source)
        self.grammars = GrammarFactory(
            self._tokenizer_info, lm.tokens.n_vocab, cache_bytes=mc.grammar_cache_bytes, compile_timeout=mc.grammar_compile_timeout
        )

    def _tokenizer_info(self) -> Any:
        import xgrammar as xgr

        lm = self.loaded
        assert lm is not None
        return xgr.TokenizerInfo.from_huggingface(
            lm.tokenizer, vocab_size=lm.tokens.n_vocab, stop_token_ids=sorted(lm.tokens.eos_ids)
        )

    def close(self) -> None:
        self.fetcher.close()
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.loaded = None

    @property
    def capacity(self) -> int:
        return self.engine.max_active if self.engine else (self.options.n_parallel or _DEFAULT_PARALLEL)

    @property
    def context_length(self) -> int | None:
        return self.loaded.n_ctx if self.loaded else None

    def healthy(self) -> bool:
        return self.engine is not None and self.engine.healthy()

    # ---- request preparation (runs in a thread) ------------------------------
    def _adapter_for(self, model: str) -> str | None:
        return model if model in self.adapters else None

    def _prepare(self, req: GenerateRequest) -> _Plan:
        lm, tpl = self.loaded, self.template
        assert lm is not None and tpl is not None
        plan = _Plan()
        plan.tool_parser, enforced = parser_for_request(self.tool_parser_name, req.tools)
        if req.tools is not None and req.tools.enforce or req.structured is not None:
            plan.grammar = self.grammars.compile(req.structured, req.tools, enforced)
        if req.kind == "chat":
            text, toks, plan.extra = self._chat_tokens(req.messages or [], req.tools, plan.tool_parser, req.chat_template_kwargs)
            plan.prompts = [toks]
            if self.reasoning_parser_name:
                plan.reasoning = ThinkParser(open_in_prompt=starts_in_reasoning(text))
            return plan
        n_vocab = lm.tokens.n_vocab
        for p in req.prompts or []:
            if isinstance(p, str):
                plan.prompts.append(lm.encode(p, add_special=True))
            else:
                check_token_ids(p, n_vocab, param="prompt")
                plan.prompts.append(list(p))
        return plan

    def _chat_tokens(
        self,
        messages: list[dict[str, Any]],
        tools: ToolSpec | None,
        tool_parser: ToolParser | None,
        template_kwargs: dict[str, Any],
        *,
        add_generation_prompt: bool = True,
        add_special: bool | None = None,
    ) -> tuple[str, list[int], dict[str, Any] | None]:
        """The chat prompt as text, ids and the vision tensors its prefill needs: the one
        rendering chat and /tokenize share. A vision processor adds no special tokens."""
        lm, tpl = self.loaded, self.template
        assert lm is not None and tpl is not None
        messages = prepare_tool_messages(messages, tools, tool_parser, tpl.source)
        tool_list = tools.tools if tools is not None else None
        if lm.processor is not None:
            vmsgs, images = vision_messages(messages, self.media)
            text = render_vision(
                tpl,
                vmsgs,
                add_generation_prompt=add_generation_prompt,
                **({"tools": tool_list} if tool_list else {}),
                **template_kwargs,
            )
            prompts, extra = lm.process_vision(text, images)
            return text, prompts[0], extra
        text = tpl.render(messages, tools=tool_list, add_generation_prompt=add_generation_prompt, **template_kwargs)
        if add_special is None:
            # templates that write BOS themselves must not get a second one
            add_special = not (tpl.bos_token and text.startswith(tpl.bos_token))
        return text, lm.encode(text, add_special=add_special), None

    def _check_lengths(self, prompts: list[list[int]], req: GenerateRequest) -> int:
        assert self.loaded is not None
        return completion_budget(prompts, req, self.loaded.n_ctx)

    # ---- tokenize / detokenize -------------------------------------------------
    def _ready_model(self) -> LoadedModel:
        if self.engine is None or self.loaded is None or not self.engine.healthy():
            raise ServiceUnavailableError("the engine is not running")
        return self.loaded

    # ---- tokenize / detokenize (textgen.tokenize.Tokenizes) ------------------
    def _chat_ids(
        self, messages: list[dict[str, Any]], tools: ToolSpec | None, parser: ToolParser | None,
        template_kwargs: dict[str, Any], *, add_generation_prompt: bool, add_special: bool | None,
    ) -> list[int]:
        return self._chat_tokens(
            messages, tools, parser, template_kwargs, add_generation_prompt=add_generation_prompt, add_special=add_special
        )[1]

    def _text_ids(self, text: str, add_special: bool | None) -> list[int]:
        return self._ready_model().encode(text, add_special=True if add_special is None else add_special)

    def _token_strs(self, ids: list[int]) -> list[str]:
        return [s if isinstance(s, str) else "" for s in self._ready_model().tokenizer.convert_ids_to_tokens(ids)]

    def _vocab_size(self) -> int:
        return int(self._ready_model().tokens.n_vocab)

    def _decode_ids(self, ids: list[int]) -> str:
        return str(self._ready_model().tokenizer.decode(ids))

    # ---- generation ------------------------------------------------------------
    async def _inline_images(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Remote images fetched (async, under the media policy) and every image's size checked
        from its header, before the thread that decodes them."""
        if self.loaded is None or self.loaded.processor is None:
            return messages
        return await inline_images(messages, self.fetcher)

    async def invoke(self, capability: Capability, payload: BaseModel) -> InvokeResult:
        if capability == TOKENIZE:
            p = payload_as(payload, TokenizePayload)
            if p.messages is not None:
                payload = p.model_copy(update={"messages": await self._inline_images(p.messages)})
        return await super().invoke(capability, payload)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        if self.engine is None or not self.engine.healthy():
            raise ServiceUnavailableError("the engine is not running")
        if request.kind == "chat" and request.messages:
            request = request.model_copy(update={"messages": await self._inline_images(request.messages)})
        plan = await asyncio.to_thread(self._prepare, request)
        events = self._generate(request, plan)
        try:
            async for ev in postprocess(events, plan.tool_parser, plan.reasoning, max_calls(request)):
                yield ev
        finally:
            await events.aclose()

    def _sequences(self, request: GenerateRequest, plan: _Plan, max_tokens: int, sink: Any, cancelled: threading.Event) -> list[Sequence]:
        p = request.params
        adapter = self._adapter_for(request.model)
        return [
            Sequence(
                index=pi * p.n + i,
                prompt=toks,
                params=p,
                max_tokens=max_tokens,
                sink=sink,
                cancelled=cancelled,
                adapter=adapter,
                group=request.request_id if plan.extra else "",
                extra=plan.extra,
                constraint=self.grammars.constraint(plan.grammar) if plan.grammar is not None else None,
            )
            for pi, toks in enumerate(plan.prompts)
            for i in range(p.n)
        ]

    async def _generate(self, request: GenerateRequest, plan: _Plan) -> AsyncGenerator[Event, None]:
        eng, lm = self.engine, self.loaded
        if eng is None or lm is None or not eng.healthy():
            raise ServiceUnavailableError("the engine is not running")
        p = request.params
        check_sampling(request, self.options.max_n, "hf")
        max_tokens = self._check_lengths(plan.prompts, request)
        async for ev in stream_sequences(
            lambda sink, cancelled: self._sequences(request, plan, max_tokens, sink, cancelled),
            eng.submit,
            eng.wake,
            prompt_tokens=sum(len(t) for t in plan.prompts),
            echo=(lambda s: lm.tokens.detokenize(s.prompt)) if p.echo else None,
            per_prompt=p.n,
            unchanged=passes_through(plan.tool_parser, plan.reasoning),
        ):

            yield ev
