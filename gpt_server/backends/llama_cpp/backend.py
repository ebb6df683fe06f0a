"""The llama.cpp backend: GGUF chat/completions on the batched engine."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ...chat.postprocess import passes_through, postprocess
from ...chat.reasoning import ThinkParser, detect_reasoning_parser, starts_in_reasoning
from ...chat.structured import GrammarFactory
from ...chat.templates import ChatTemplate
from ...chat.tool_parsers import ToolParser, detect_tool_parser
from ...chat.tools import max_calls, parser_for_request, prepare_tool_messages
from ...errors import ServiceUnavailableError
from ...protocol.worker import (
    Event,
    GenerateRequest,
    ToolSpec,
)
from ...settings import ConfigError, resolve_model_path
from ..base import Backend, BackendSpec
from ..devices import require_gpu, wants_gpu
from ..textgen.limits import check_sampling, check_token_ids, completion_budget, prepares_inline
from ..textgen.sequences import SeqEvent, stream_sequences
from ..textgen.tokenize import TOKENIZE_CAPABILITIES, Tokenizes
from . import DEFAULT_COMPUTE_NICE, LlamaCppOptions, SpeculativeOptions
from .engine import EngineOptions, LlamaEngine, Sequence

__all__ = ["LlamaCppBackend"]


@dataclass
class _ChatPlan:
    """How one request is decoded and parsed."""

    tool_parser: ToolParser | None = None
    reasoning: ThinkParser | None = None
    grammar: Any = None

_DEFAULT_PARALLEL = 4
# detokenising more ids than this runs in a thread


class LlamaCppBackend(Tokenizes, Backend):
    capabilities: frozenset[str] = frozenset({"chat", "completion"}) | TOKENIZE_CAPABILITIES
    options: LlamaCppOptions

    def __init__(self, spec: BackendSpec) -> None:
        super().__init__(spec)
        self.engine: LlamaEngine | None = None
        self.template: ChatTemplate | None = None

    def load(self) -> None:
        mc = self.options
        if not os.path.isfile(self.spec.model_path):
            raise ConfigError(
                f"models.{self.spec.entry.name}.model_config.model_name_or_path: GGUF file not found: {self.spec.model_path}"
            )
        import llama_cpp

        require_gpu(self.spec, bool(llama_cpp.llama_supports_gpu_offload()), "this llama-cpp-python build has no GPU offload")
        spec = mc.speculative
        if spec is not None and spec.draft_model is not None:
            key = f"models.{self.spec.entry.name}.model_config.speculative.draft_model"
            draft = resolve_model_path(spec.draft_model)
            if not os.path.isfile(draft):
                raise ConfigError(f"{key}: GGUF file not found: {draft}")
            spec = spec.model_copy(update={"draft_model": draft})
        try:
            self.engine = self._engine(spec)
        except ValueError as exc:  # the draft model does not fit the model
            raise ConfigError(f"models.{self.spec.entry.name}.model_config.speculative: {exc}") from exc
        eng = self.engine
        meta = eng.metadata()

        def special(key: str) -> str:
            tid = meta.get(f"tokenizer.ggml.{key}_token_id")
            return eng.token_text(int(tid)) if tid is not None and tid.isdigit() else ""

        self.template = ChatTemplate(
            mc.chat_template or eng.chat_template(), bos_token=special("bos"), eos_token=special("eos")
        )
        self.tool_parser_name = mc.tool_call_parser or detect_tool_parser(self.template.source)
        self.reasoning_parser_name = mc.reasoning_parser or detect_reasoning_parser(self.template.source)
        self.grammars = GrammarFactory(
            self._tokenizer_info, eng.n_vocab, cache_bytes=mc.grammar_cache_bytes, compile_timeout=mc.grammar_compile_timeout
        )

    def _engine(self, spec: SpeculativeOptions | None) -> LlamaEngine:
        return LlamaEngine(self.engine_options(spec))

    def engine_options(self, spec: SpeculativeOptions | None) -> EngineOptions:
        """The engine's settings from the entry (``spec``: the speculative options, paths resolved)."""
        mc = self.options
        n_gpu_layers = mc.n_gpu_layers if mc.n_gpu_layers is not None else (-1 if self.spec.gpus or wants_gpu(self.spec) else 0)
        return EngineOptions(
            model_path=self.spec.model_path,
            n_ctx=mc.n_ctx or mc.max_model_len,
            n_parallel=mc.n_parallel or _DEFAULT_PARALLEL,
            n_threads=mc.n_threads or self.spec.n_threads or os.cpu_count() or 1,
            n_batch=mc.n_batch or 512,
            n_gpu_layers=n_gpu_layers,
            speculative=spec,
            repack=mc.repack,
            hugepages=mc.hugepages if mc.hugepages is not None else n_gpu_layers == 0,
            nice=mc.compute_nice if mc.compute_nice is not None else (0 if n_gpu_layers else DEFAULT_COMPUTE_NICE),
            turnaround_hold=_hold(mc.turnaround_hold_ms),
        )

    def _tokenizer_info(self) -> Any:
        import xgrammar as xgr

        eng = self.engine
        assert eng is not None
        vocab = [eng.piece(i) for i in range(eng.n_vocab)]
        stops = [i for i in range(eng.n_vocab) if eng.is_eog(i)]
        return xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=eng.n_vocab, stop_token_ids=stops)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    @property
    def capacity(self) -> int:
        return self.engine.n_parallel if self.engine else _DEFAULT_PARALLEL

    @property
    def context_length(self) -> int | None:
        return self.engine.n_ctx_seq if self.engine else None

    def healthy(self) -> bool:
        return self.engine is not None and self.engine.healthy()

    def stats(self) -> dict[str, int]:
        """Speculative decoding: ``spec_drafted`` tokens drafted, ``spec_accepted`` of them kept,
        ``spec_verify_steps`` sequence-steps that verified drafts (zeros when it is off); the draft
        gate's steps given drafts by why (``gate_tried``: a shape not measured yet,
        ``gate_chosen``: expected to pay best, ``gate_explored``: keeping its figures current). The
        decode loop: ``step_steps`` decode steps, ``step_tokens`` batch tokens they decoded,
        ``step_decode_us`` microseconds inside llama_decode and ``step_host_us`` on the engine
        thread around it (batch, drafts, sampling, detokenizing, events), which the engine waits through.
        ``hugepages_mib``: how much of the engine's memory was put in huge pages at load (hugepages.py).
        ``turnaround_holds``: waits after a finish for the request that follows it (textgen/turnaround.py),
        ``turnaround_joined``: of them, those after which requests were waiting (they joined the next step),
        ``turnaround_gathered``: those begun with a request already waiting, for the rest of a group that
        finished in one step (their prompts go in together); ``turnaround_bursts``: waits on an idle engine
        for the rest of requests sent to it at once."""
        eng = self.engine
        if eng is None:
            return {}
        gate = eng.gate.choices if eng.gate is not None else {}
        return {
            **{f"spec_{k}": v for k, v in eng.spec_stats.items()},
            **{f"gate_{k}": v for k, v in gate.items()},
            **{f"step_{k}": v for k, v in eng.step_stats.items()},
            "hugepages_mib": eng.hugepages_bytes >> 20,
            "turnaround_holds": eng.turnaround.holds,
            "turnaround_joined": eng.turnaround.joined,
            "turnaround_gathered": eng.turnaround.gathered,
            "turnaround_bursts": eng.turnaround.bursts,
        }

    # ---- request preparation (in a thread, unless short: textgen.limits.prepares_inline) ----
    def _prepare(self, req: GenerateRequest) -> tuple[list[list[int]], _ChatPlan]:
        eng = self.engine
        assert eng is not None and self.template is not None
        plan = _ChatPlan()
        plan.tool_parser, enforced = parser_for_request(self.tool_parser_name, req.tools)
        if req.tools is not None and req.tools.enforce or req.structured is not None:
            plan.grammar = self.grammars.compile(req.structured, req.tools, enforced)
        if req.kind == "chat":
            text, toks = self._chat_tokens(req.messages or [], req.tools, plan.tool_parser, req.chat_template_kwargs)
            if self.reasoning_parser_name:
                plan.reasoning = ThinkParser(open_in_prompt=starts_in_reasoning(text))
            return [toks], plan
        prompts: list[list[int]] = []
        for p in req.prompts or []:
            if isinstance(p, str):
                prompts.append(self._prompt_tokens(p))
            else:
                check_token_ids(p, eng.n_vocab, param="prompt")
                prompts.append(list(p))
        return prompts, plan

    def _chat_tokens(
        self,
        messages: list[dict[str, Any]],
        tools: ToolSpec | None,
        tool_parser: ToolParser | None,
        template_kwargs: dict[str, Any],
        *,
        add_generation_prompt: bool = True,
        add_special: bool | None = None,
    ) -> tuple[str, list[int]]:
        """The chat prompt as text and ids: the one rendering chat and /tokenize share."""
        eng, tpl = self.engine, self.template
        assert eng is not None and tpl is not None
        messages = prepare_tool_messages(messages, tools, tool_parser, tpl.source)
        text = tpl.render(
            messages,
            tools=tools.tools if tools is not None else None,
            add_generation_prompt=add_generation_prompt,
            **template_kwargs,
        )
        if add_special is None:
            # templates that write BOS themselves must not get a second one
            add_special = eng.add_bos() and not (tpl.bos_token and text.startswith(tpl.bos_token))
        return text, eng.tokenize(text, add_special=add_special, parse_special=True)

    def _prompt_tokens(self, text: str, add_special: bool | None = None) -> list[int]:
        eng = self.engine
        assert eng is not None
        return eng.tokenize(text, add_special=eng.add_bos() if add_special is None else add_special, parse_special=False)

    def _check_lengths(self, prompts: list[list[int]], req: GenerateRequest) -> int:
        assert self.engine is not None
        return completion_budget(prompts, req, self.engine.n_ctx_seq)

    # ---- tokenize / detokenize -------------------------------------------------
    def _ready_engine(self) -> LlamaEngine:
        eng = self.engine
        if eng is None or not eng.healthy():
            raise ServiceUnavailableError("the engine is not running")
        return eng

    # ---- tokenize / detokenize (textgen.tokenize.Tokenizes) ------------------
    def _chat_ids(
        self, messages: list[dict[str, Any]], tools: ToolSpec | None, parser: ToolParser | None,
        template_kwargs: dict[str, Any], *, add_generation_prompt: bool, add_special: bool | None,
    ) -> list[int]:
        return self._chat_tokens(
            messages, tools, parser, template_kwargs, add_generation_prompt=add_generation_prompt, add_special=add_special
        )[1]

    def _text_ids(self, text: str, add_special: bool | None) -> list[int]:
        return self._prompt_tokens(text, add_special)

    def _token_strs(self, ids: list[int]) -> list[str]:
        eng = self._ready_engine()
        return [eng.token_text(t) for t in ids]

    def _vocab_size(self) -> int:
        return int(self._ready_engine().n_vocab)

    def _decode_ids(self, ids: list[int]) -> str:
        return str(self._ready_engine().decode_text(ids))

    # ---- generation ------------------------------------------------------------
    async def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        eng = self.engine
        if eng is None or not eng.healthy():
            raise ServiceUnavailableError("the engine is not running")
        if prepares_inline(request):
            prompts, plan = self._prepare(request)
        else:
            prompts, plan = await asyncio.to_thread(self._prepare, request)
        events = self._generate(request, prompts, plan)
        try:
            async for ev in postprocess(events, plan.tool_parser, plan.reasoning, max_calls(request)):
                yield ev
        finally:
            await events.aclose()

    async def _generate(self, request: GenerateRequest, prompts: list[list[int]], plan: _ChatPlan) -> AsyncGenerator[Event, None]:
        eng = self.engine
        if eng is None or not eng.healthy():
            raise ServiceUnavailableError("the engine is not running")
        p = request.params
        check_sampling(request, self.options.max_n, "llama_cpp")
        max_tokens = self._check_lengths(prompts, request)

        def make(sink: Callable[[SeqEvent], None], cancelled: threading.Event) -> list[Sequence]:
            return [
                Sequence(
                    index=pi * p.n + i,
                    prompt=toks,
                    params=p,
                    max_tokens=max_tokens,
                    sink=sink,
                    cancelled=cancelled,
                    constraint=self.grammars.constraint(plan.grammar) if plan.grammar is not None else None,
                )
                for pi, toks in enumerate(prompts)
                for i in range(p.n)
            ]

        async for ev in stream_sequences(
            make,
            eng.submit,
            eng.wake,
            prompt_tokens=sum(len(t) for t in prompts),
            echo=(lambda s: eng.detokenize(s.prompt)) if p.echo else None,
            per_prompt=p.n,
            unchanged=passes_through(plan.tool_parser, plan.reasoning),
        ):

            yield ev


def _hold(ms: float | None) -> float | None:
    """``turnaround_hold_ms`` as ``EngineOptions.turnaround_hold``: -1 (up to a step), None (0: never), seconds."""
    if ms is None:
        return -1.0
    return ms / 1e3 if ms > 0 else None
