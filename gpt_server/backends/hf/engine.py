"""A batched decode loop for transformers models, on one engine thread.

Requests that arrive together and share an adapter (and, for vision, the same images)
form a *cohort*: one left-padded prefill, then one forward per step over all its rows
with a shared ``DynamicCache`` and attention mask. Several cohorts run interleaved, one
forward each per engine step, so a new request starts at the next step instead of
waiting for older ones to finish (a simple continuous batching). Finished or cancelled
rows leave their cohort at once (``batch_select_indices`` on the cache).

Each row is sampled on its own by the shared numpy sampler, so results match the
llama.cpp engine's semantics; a per-sequence ``constraint`` (grammar) and
``logits_hook(generated_ids, logits) -> logits`` can narrow the choice.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...protocol.worker import SamplingParams, TokenLogprob
from ..textgen.engine_thread import EngineThread
from ..textgen.sampling import SamplerState
from ..textgen.sequences import SeqEvent, finish, sample_step
from ..textgen.textstream import TextStream
from .tokens import TokenTable

__all__ = ["HFEngine", "Sequence", "LogitsHook"]

log = logging.getLogger(__name__)

LogitsHook = Callable[[list[int], np.ndarray], np.ndarray]


@dataclass
class Sequence:
    index: int
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    sink: Callable[[SeqEvent], None]
    cancelled: threading.Event
    adapter: str | None = None  # LoRA adapter name, None = base model
    group: str = ""  # sequences only batch with others of the same group (vision: one request)
    extra: dict[str, Any] | None = None  # processor tensors for the prefill (pixel_values …)
    constraint: Any = None  # chat.structured.GrammarConstraint, or None
    logits_hook: LogitsHook | None = None
    # engine-side state
    sampler: SamplerState | None = None
    text: TextStream | None = None
    generated: list[int] = field(default_factory=list)
    pending_lp: list[TokenLogprob] = field(default_factory=list)
    done: bool = False


@dataclass
class _Cohort:
    rows: list[Sequence]
    adapter: str | None
    cache: Any = None
    mask: Any = None  # torch (B, L) attention mask
    next_ids: list[int] = field(default_factory=list)


class HFEngine(EngineThread[Sequence, list[_Cohort]]):
    """Owns the model's forward passes and the decode thread."""

    def __init__(
        self,
        model: Any,
        tokens: TokenTable,
        *,
        max_active: int,
        n_ctx: int,
        set_adapter: Callable[[str | None], None],
    ) -> None:
        super().__init__(n_vocab=tokens.n_vocab, thread_name="hf-engine", label="transformers")
        self.model = model
        self.tokens = tokens
        self.max_active = max_active
        self.n_ctx = n_ctx
        self._set_adapter = set_adapter
        self._device = model.get_input_embeddings().weight.device
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
        self._cohorts: list[_Cohort] = []
        self._start_thread()

    @property
    def active(self) -> int:
        return sum(len(c.rows) for c in self._cohorts)

    def close(self) -> None:
        self._stop_thread(timeout=30)

    # ---- the loop -----------------------------------------------------------
    def _loop_context(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        return torch.inference_mode()

    def _busy(self) -> bool:
        return bool(self._cohorts)

    def _step(self, new: list[_Cohort]) -> None:
        for cohort in new:
            self._guard(cohort, self._prefill)
        for cohort in list(self._cohorts):
            if cohort not in new:
                self._guard(cohort, self._decode)
        self._cohorts = [c for c in self._cohorts if c.rows]

    def _fail_running(self, error: str) -> None:
        for c in self._cohorts:
            for s in c.rows:
                self._finish(s, None, error=error)

    def _guard(self, cohort: _Cohort, fn: Callable[[_Cohort], None]) -> None:
        """Run one forward; a failure ends that cohort's requests, not the engine."""
        try:
            fn(cohort)
        except Exception as exc:
            log.exception("forward pass failed")
            for s in cohort.rows:
                self._finish(s, None, error=f"forward pass failed ({type(exc).__name__})")  # the detail is in the log
            cohort.rows = []

    def _admit(self) -> list[_Cohort]:
        """Group waiting sequences (same adapter and group) into new cohorts, within capacity."""
        free = self.max_active - self.active
        groups: dict[tuple[str | None, str], list[Sequence]] = {}
        kept: deque[Sequence] = deque()
        while self._waiting:
            s = self._waiting.popleft()
            if s.cancelled.is_set():
                s.sink(SeqEvent(index=s.index, finish_reason="abort"))
                continue
            if free <= 0 or kept:  # first come, first served
                kept.append(s)
                continue
            groups.setdefault((s.adapter, s.group), []).append(s)
            free -= 1
        self._waiting = kept
        new = [_Cohort(rows=rows, adapter=key[0]) for key, rows in groups.items()]
        self._cohorts.extend(new)
        return new

    # ---- forwards -------------------------------------------------------------
    def _forward(self, cohort: _Cohort, **inputs: Any) -> np.ndarray:
        import torch

        self._set_adapter(cohort.adapter)
        out = self.model(**inputs, past_key_values=cohort.cache, use_cache=True, **self._keep)
        cohort.cache = out.past_key_values
        logits = out.logits[:, -1, :].to(torch.float32).cpu().numpy()
        return logits[:, : self.n_vocab].copy()

    def _prefill(self, cohort: _Cohort) -> None:
        import torch
        from transformers import DynamicCache

        rows = cohort.rows
        width = max(len(s.prompt) for s in rows)
        pad = self.tokens.pad_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, s in enumerate(rows):
            ids[i, width - len(s.prompt) :] = torch.tensor(s.prompt, dtype=torch.long)
            mask[i, width - len(s.prompt) :] = 1
        extra = {k: v.to(self._device) for k, v in (rows[0].extra or {}).items()}
        if extra and len(rows) > 1:  # n samples of one vision request: every row gets the images
            extra = {k: v.repeat(len(rows), *([1] * (v.dim() - 1))) for k, v in extra.items()}
        cohort.cache = DynamicCache(config=self.model.config)
        cohort.mask = mask.to(self._device)
        pos = (cohort.mask.cumsum(-1) - 1).clamp(min=0)
        logits = self._forward(cohort, input_ids=ids.to(self._device), attention_mask=cohort.mask, position_ids=pos, **extra)
        self._after(cohort, logits)

    def _decode(self, cohort: _Cohort) -> None:
        import torch

        self._drop(cohort, [i for i, s in enumerate(cohort.rows) if s.cancelled.is_set()], "abort")
        if not cohort.rows:
            return
        ids = torch.tensor(cohort.next_ids, dtype=torch.long, device=self._device).unsqueeze(1)
        ones = torch.ones((len(cohort.rows), 1), dtype=cohort.mask.dtype, device=self._device)
        cohort.mask = torch.cat([cohort.mask, ones], dim=1)
        pos = cohort.mask.sum(-1, keepdim=True) - 1
        logits = self._forward(cohort, input_ids=ids, attention_mask=cohort.mask, position_ids=pos)
        self._after(cohort, logits)

    def _after(self, cohort: _Cohort, logits: np.ndarray) -> None:
        nexts: list[int] = []
        ended: list[int] = []
        for i, s in enumerate(cohort.rows):
            tok = self._sample(s, logits[i], prompt_len=len(s.prompt))
            nexts.append(tok)
            if s.done:
                ended.append(i)
        cohort.next_ids = nexts
        self._drop(cohort, ended, None)

    def _drop(self, cohort: _Cohort, rows: list[int], reason: str | None) -> None:
        """Remove rows from a cohort (finishing them with ``reason`` unless already done)."""
        if not rows:
            return
        import torch

        for i in rows:
            if reason is not None:
                self._finish(cohort.rows[i], reason)
        dropped = set(rows)
        keep = [i for i in range(len(cohort.rows)) if i not in dropped]
        cohort.rows = [cohort.rows[i] for i in keep]
        cohort.next_ids = [cohort.next_ids[i] for i in keep] if cohort.next_ids else []
        if keep:
            idx = torch.tensor(keep, dtype=torch.long, device=self._device)
            cohort.cache.batch_select_indices(idx)
            cohort.mask = cohort.mask[idx]

    # ---- sampling -------------------------------------------------------------
    def _sample(self, s: Sequence, logits: np.ndarray, prompt_len: int) -> int:
        tok, reason = sample_step(
            s,
            logits,
            is_eos=self.tokens.eos_ids.__contains__,
            piece=self.tokens.piece,
            text_of=self.tokens.text_of,
            context_full=prompt_len + len(s.generated) >= self.n_ctx,
            hook=s.logits_hook,
        )
        if reason is not None:
            self._finish(s, reason)
        return tok

    def _finish(self, s: Sequence, reason: str | None, error: str | None = None) -> None:
        finish(s, reason, error)
