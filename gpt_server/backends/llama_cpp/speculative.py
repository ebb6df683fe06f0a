"""Draft proposers for speculative decoding in the llama.cpp engine.

The engine puts a sequence's next token and up to k drafted tokens into one batch, samples
every position with the sequence's own sampler and keeps the drafts while they agree (see
``LlamaEngine._verify``). What proposes the drafts:

- ``NgramIndex`` (prompt lookup): the tokens that followed the latest earlier occurrence of
  the history's last n tokens (n from ``ngram_max`` down to ``ngram_min``). Costs a few dict
  operations per token; wins where the answer copies its input (rewrites, code edits).
- ``DraftModel``: a second, small GGUF with its own context and one KV sequence per slot,
  proposing k tokens greedily. Its cache follows the target's history by common prefix: what
  the target rejected is removed (``llama_memory_seq_rm``) before the next proposal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals

__all__ = ["NgramIndex", "DraftModel", "DraftRequest", "common_prefix", "put_token"]

log = logging.getLogger(__name__)


class NgramIndex:
    """Prompt lookup over one sequence's history (prompt + generated tokens)."""

    def __init__(self, n_min: int, n_max: int) -> None:
        self.n_min, self.n_max = n_min, n_max
        self.history: list[int] = []
        # n → (n-gram → start of its latest occurrence that has a following token)
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(n_min, n_max + 1)}

    def extend(self, tokens: list[int]) -> None:
        h = self.history
        for tok in tokens:
            h.append(tok)
            end = len(h) - 1  # h[end] follows the n-grams ending just before it
            for n, idx in self._index.items():
                if end >= n:
                    idx[tuple(h[end - n : end])] = end - n

    def sync(self, prompt: list[int], generated: list[int]) -> None:
        """Bring the history up to ``prompt + generated`` (both only ever grow)."""
        have = len(self.history)
        if have < len(prompt):
            self.extend(prompt[have:])
            have = len(prompt)
        done = have - len(prompt)
        if done < len(generated):
            self.extend(generated[done:])

    def propose(self, k: int) -> list[int]:
        h = self.history
        for n in range(min(self.n_max, len(h) - 1), self.n_min - 1, -1):
            start = self._index[n].get(tuple(h[len(h) - n :]))
            if start is not None:
                return h[start + n : start + n + k]
        return []


@dataclass
class DraftRequest:
    seq_id: int
    history: list[int]  # the target's tokens so far, the last one not yet decoded by the target either
    k: int
    drafts: list[int] = field(default_factory=list)


class DraftModel:
    """A small model proposing drafts greedily, one KV sequence per engine slot."""

    def __init__(
        self, path: str, *, n_parallel: int, n_ctx_seq: int, n_batch: int, n_threads: int, n_gpu_layers: int, extra_buffers: bool = True
    ) -> None:
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        mparams.use_extra_bufts = extra_buffers  # as the target's (buffers.py)
        self.model = _internals.LlamaModel(path_model=path, params=mparams, verbose=False)
        self.n_vocab = self.model.n_vocab()
        self.n_ctx_seq = min(n_ctx_seq, self.model.n_ctx_train())
        self.n_batch = n_batch
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = self.n_ctx_seq * n_parallel
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, 512)
        cparams.n_seq_max = n_parallel
        cparams.kv_unified = True
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        self.ctx = _internals.LlamaContext(model=self.model, params=cparams, verbose=False)
        self.memory = llama_cpp.llama_get_memory(self.ctx.ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._kv: dict[int, list[int]] = {i: [] for i in range(n_parallel)}  # what each sequence's cache holds

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self.ctx.close()
        self.model.close()

    def propose(self, reqs: list[DraftRequest]) -> None:
        """Fill each request's ``drafts`` with up to ``k`` greedy tokens (fewer near the draft
        model's context end; none after a failed decode)."""
        pending: dict[int, list[int]] = {}
        for r in reqs:
            if len(r.history) + r.k > self.n_ctx_seq:
                continue
            kv = self._kv[r.seq_id]
            keep = min(common_prefix(kv, r.history), len(r.history) - 1)
            if keep < len(kv):
                llama_cpp.llama_memory_seq_rm(self.memory, r.seq_id, keep, -1)
                del kv[keep:]
            pending[r.seq_id] = r.history[keep:]
        live = {r.seq_id: r for r in reqs if r.seq_id in pending}
        # prefill what each cache lacks (chunked by n_batch), the last token with logits → draft 1
        while pending:
            n, rows = 0, []
            for sid in list(pending):
                toks = pending[sid]
                take = min(len(toks), self.n_batch - n)
                if take <= 0:
                    break
                kv = self._kv[sid]
                for j in range(take):
                    last = take == len(toks) and j == take - 1
                    n = put_token(self._batch, n, toks[j], len(kv) + j, sid, last)
                    if last:
                        rows.append((sid, n - 1))
                kv.extend(toks[:take])
                if take == len(toks):
                    del pending[sid]
                else:
                    pending[sid] = toks[take:]
            if not self._decode(n, live):
                return
            for sid, i in rows:
                live[sid].drafts.append(self._argmax(i))
        # then one token per sequence and round until each has k
        while True:
            n, rows = 0, []
            for sid, r in live.items():
                if len(r.drafts) < r.k:
                    kv = self._kv[sid]
                    n = put_token(self._batch, n, r.drafts[-1], len(kv), sid, True)
                    kv.append(r.drafts[-1])
                    rows.append((sid, n - 1))
            if not n or not self._decode(n, live):
                return
            for sid, i in rows:
                live[sid].drafts.append(self._argmax(i))

    def _decode(self, n: int, live: dict[int, DraftRequest]) -> bool:
        self._batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx.ctx, self._batch)
        if rc != 0:  # drafting is optional: forget the caches, propose nothing more this step
            log.warning("draft model: llama_decode failed with code %d", rc)
            for sid in self._kv:
                llama_cpp.llama_memory_seq_rm(self.memory, sid, -1, -1)
                self._kv[sid] = []
            for r in live.values():
                r.drafts.clear()
            return False
        return True

    def _argmax(self, i: int) -> int:
        ptr = llama_cpp.llama_get_logits_ith(self.ctx.ctx, i)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))


def put_token(b: Any, n: int, token: int, pos: int, seq_id: int, logits: bool) -> int:
    """Row ``n`` of a ``llama_batch``: one token of one sequence; the next row's index."""
    b.token[n] = token
    b.pos[n] = pos
    b.n_seq_id[n] = 1
    b.seq_id[n][0] = seq_id
    b.logits[n] = logits
    return n + 1


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
