"""A batched decode loop for transformers models, on one engine thread.

Requests that arrive together and share an adapter (and, for vision, the same images)
form a *cohort*: one left-padded prefill, then one forward per step over all its rows
with a shared ``DynamicCache`` and attention mask. A new request starts at the next step
instead of waiting for older ones to finish: it is prefilled as its own cohort, and then
joins the running cohort of the same adapter (its cache and mask left-padded to the
longer length and stacked on the batch axis), so every step is one forward over all the
rows of an adapter — continuous batching. Finished or cancelled rows leave at once
(``batch_select_indices`` on the cache), and columns no remaining row attends to are
cut from the left, so the padded length never exceeds the longest live row.

A finished row's KV cache is kept in a prefix store (per adapter, LRU within a byte
budget): a later prompt that shares its prefix — the next turn of the chat, a repeated
system prompt — starts from a copy of those tensors and prefills only the rest.

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
    cached: int = 0  # prompt tokens taken from the prefix store (not prefilled)
    reuse: Any = None  # (tokens, per-layer (keys, values)) found at admission


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
        prefix_cache_bytes: int = 0,
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
        self.prefixes = PrefixStore(prefix_cache_bytes)
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
        self._cohorts = self._merge([c for c in self._cohorts if c.rows])

    @property
    def cohorts(self) -> int:
        """How many forwards one engine step runs (one per adapter once requests have joined)."""
        return len(self._cohorts)

    def _merge(self, cohorts: list[_Cohort]) -> list[_Cohort]:
        """Join cohorts of one adapter into one batch (left-pad the shorter caches and masks)."""
        out: list[_Cohort] = []
        by_adapter: dict[str | None, _Cohort] = {}
        for c in cohorts:
            into = by_adapter.get(c.adapter)
            if into is None or not (_mergeable(into) and _mergeable(c)):
                if into is None:
                    by_adapter[c.adapter] = c
                out.append(c)
                continue
            try:
                _join(into, c)
            except Exception:  # an unexpected cache layout: keep the cohorts apart
                log.exception("could not join two batches; they run side by side")
                out.append(c)
        return out

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
        new_hits: list[_Cohort] = []
        kept: deque[Sequence] = deque()
        while self._waiting:
            s = self._waiting.popleft()
            if s.cancelled.is_set():
                s.sink(SeqEvent(index=s.index, finish_reason="abort"))
                continue
            if free <= 0 or kept:  # first come, first served
                kept.append(s)
                continue
            free -= 1
            if s.extra is None:
                s.reuse = self.prefixes.find(s.adapter, s.prompt)
            if s.reuse is not None:  # prefilled on its own from the stored prefix
                new_hits.append(_Cohort(rows=[s], adapter=s.adapter))
                continue
            groups.setdefault((s.adapter, s.group), []).append(s)
        self._waiting = kept
        new = [_Cohort(rows=rows, adapter=key[0]) for key, rows in groups.items()] + new_hits
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
        if len(rows) == 1 and rows[0].reuse is not None:
            self._prefill_from(cohort, rows[0])
            return
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

    def _prefill_from(self, cohort: _Cohort, s: Sequence) -> None:
        """Prefill one row from a stored prefix: its tensors copied into a fresh cache, the rest forwarded."""
        import torch
        from transformers import DynamicCache

        n, tensors = s.reuse
        s.reuse = None
        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(tensors):
            cache.update(k[..., :n, :].clone(), v[..., :n, :].clone(), i)
        cohort.cache = cache
        total = len(s.prompt)
        cohort.mask = torch.ones((1, total), dtype=torch.long, device=self._device)
        ids = torch.tensor([s.prompt[n:]], dtype=torch.long, device=self._device)
        pos = torch.arange(n, total, dtype=torch.long, device=self._device).unsqueeze(0)
        s.cached = n
        logits = self._forward(cohort, input_ids=ids, attention_mask=cohort.mask, position_ids=pos)
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
            try:
                tok = self._sample(s, logits[i], prompt_len=len(s.prompt))
            except Exception as exc:  # one sequence's sampling failed: it ends, its cohort goes on
                log.error("sampling failed; ending that sequence", exc_info=exc)
                self._finish(s, None, error=f"sampling failed ({type(exc).__name__})")
                tok = 0  # never forwarded: the row is dropped below
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
            self._keep_prefix(cohort, i)
        dropped = set(rows)
        keep = [i for i in range(len(cohort.rows)) if i not in dropped]
        cohort.rows = [cohort.rows[i] for i in keep]
        cohort.next_ids = [cohort.next_ids[i] for i in keep] if cohort.next_ids else []
        if keep:
            idx = torch.tensor(keep, dtype=torch.long, device=self._device)
            cohort.cache.batch_select_indices(idx)
            cohort.mask = cohort.mask[idx]
            _trim_left(cohort)

    def _keep_prefix(self, cohort: _Cohort, i: int) -> None:
        """Store row ``i``'s KV (its prompt and the tokens generated and forwarded so far)."""
        s = cohort.rows[i]
        if not self.prefixes.budget or s.extra is not None:
            return
        layers = _layers(cohort.cache)
        if layers is None or cohort.mask is None:
            return
        tokens = s.prompt + s.generated[:-1]  # the last sampled token was never forwarded
        n = int(cohort.mask[i].sum().item())
        width = cohort.mask.shape[1]
        if n != len(tokens) or n < _MIN_PREFIX or any(layer.keys.shape[-2] != width for layer in layers):
            return
        if not bool(cohort.mask[i, width - n :].all()):
            return  # not one contiguous run at the right: leave it
        tensors = [(layer.keys[i : i + 1, :, width - n :, :].clone(), layer.values[i : i + 1, :, width - n :, :].clone())
                   for layer in layers]
        self.prefixes.put(s.adapter, tokens, tensors)

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


# ---- the prefix store --------------------------------------------------------------
_MIN_PREFIX = 16  # shorter shared prefixes are prefilled with the rest of their cohort


class PrefixStore:
    """KV tensors of finished rows, per adapter, least recently used first out, within a byte budget.

    Used on the engine thread only.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.hits = 0
        self.hit_tokens = 0
        self._entries: dict[tuple[str | None, tuple[int, ...]], tuple[list[Any], int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, adapter: str | None, tokens: list[int], tensors: list[tuple[Any, Any]]) -> None:
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in tensors)
        if size > self.budget:
            return
        key = (adapter, tuple(tokens))
        old = self._entries.pop(key, None)
        if old is not None:
            self.used -= old[1]
        # an entry whose tokens are a prefix of the new one adds nothing any more
        for other in [k for k in self._entries if k[0] == adapter and len(k[1]) <= len(tokens) and key[1][: len(k[1])] == k[1]]:
            self.used -= self._entries.pop(other)[1]
        while self._entries and self.used + size > self.budget:
            self.used -= self._entries.pop(next(iter(self._entries)))[1]
        self._entries[key] = (tensors, size)
        self.used += size

    def find(self, adapter: str | None, prompt: list[int]) -> tuple[int, list[Any]] | None:
        """The longest stored prefix of ``prompt`` (at least ``_MIN_PREFIX`` tokens, never all
        of it: the last prompt token is forwarded to get the logits); it becomes most recent."""
        best, best_n = None, 0
        limit = len(prompt) - 1
        for key in self._entries:
            if key[0] != adapter:
                continue
            n = _common_prefix(key[1], prompt, limit)
            if n > best_n:
                best, best_n = key, n
        if best is None or best_n < _MIN_PREFIX:
            return None
        entry = self._entries.pop(best)
        self._entries[best] = entry
        self.hits += 1
        self.hit_tokens += best_n
        return best_n, entry[0]


def _common_prefix(a: tuple[int, ...], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# ---- joining batches ------------------------------------------------------------
def _layers(cache: Any) -> list[Any] | None:
    """The cache's per-layer tensors holders when every layer is a plain full-attention one."""
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        return None  # sliding-window, linear-attention or quantised caches are not joined
    if any(getattr(layer, "keys", None) is None or getattr(layer, "values", None) is None for layer in layers):
        return None
    return list(layers)


def _mergeable(c: _Cohort) -> bool:
    layers = _layers(c.cache) if c.cache is not None and c.mask is not None else None
    if not layers or not c.rows or len(c.next_ids) != len(c.rows):
        return False
    return all(layer.keys.shape[-2] == c.mask.shape[1] for layer in layers)


def _join(into: _Cohort, other: _Cohort) -> None:
    """Append ``other``'s rows to ``into``: left-pad the shorter of the two, stack on the batch axis."""
    import torch
    import torch.nn.functional as F

    a, b = _layers(into.cache), _layers(other.cache)
    assert a is not None and b is not None and len(a) == len(b)
    la, lb = into.mask.shape[1], other.mask.shape[1]
    width = max(la, lb)

    def pad(t: Any, length: int) -> Any:  # (B, H, L, D) → (B, H, width, D), zeros on the left
        return t if length == width else F.pad(t, (0, 0, width - length, 0))

    for x, y in zip(a, b, strict=True):
        x.keys = torch.cat([pad(x.keys, la), pad(y.keys, lb)], dim=0)
        x.values = torch.cat([pad(x.values, la), pad(y.values, lb)], dim=0)
    into.mask = torch.cat([F.pad(into.mask, (width - la, 0)), F.pad(other.mask, (width - lb, 0))], dim=0)
    into.rows = into.rows + other.rows
    into.next_ids = into.next_ids + other.next_ids
    other.rows = []


def _trim_left(c: _Cohort) -> None:
    """Cut the leading columns that no row attends to (left by rows that have left)."""
    layers = _layers(c.cache)
    if layers is None or c.mask is None or c.mask.shape[1] == 0:
        return
    used = c.mask.any(dim=0).nonzero()
    start = int(used[0].item()) if used.numel() else 0
    if start <= 0 or any(layer.keys.shape[-2] != c.mask.shape[1] for layer in layers):
        return
    for layer in layers:
        layer.keys = layer.keys[..., start:, :]
        layer.values = layer.values[..., start:, :]
    c.mask = c.mask[:, start:]
