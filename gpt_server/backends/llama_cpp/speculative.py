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

How many of the proposed drafts a step verifies is ``DraftGate``'s choice: every verified row
costs time, and what a row costs depends on the hardware and the batch (on a GPU, or where a
step is bound by reading the weights, a few more rows are nearly free; where it is bound by
arithmetic, as for a small quantised model on a CPU or a full batch, each costs most of a step).
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
import logging
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals

__all__ = ["NgramIndex", "DraftModel", "DraftGate", "DraftRequest", "LogitRows", "MAX_SEQ", "common_prefix", "Batch"]

MAX_SEQ = 256  # llama.cpp's LLAMA_MAX_SEQ: most sequences (streams) a context takes

log = logging.getLogger(__name__)


class NgramIndex:
    """Prompt lookup over one sequence's history (prompt + generated tokens)."""

    def __init__(self, n_min: int, n_max: int) -> None:
        self.n_min, self.n_max = n_min, n_max
        self.history: list[int] = []
        # n → (n-gram → start of its latest occurrence that has a following token); n from 1:
        # ``fill`` looks up single tokens too
        self._index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(1, n_max + 1)}

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

    def fill(self, draft: list[int], k: int) -> list[int]:
        """``draft`` made ``k`` tokens long with filler: what followed the latest earlier
        occurrence of the last n tokens of history + draft, n down to 1, and the last token
        again where nothing matches. A filler row is verified as any draft (kept only where the
        model agrees); it is there so that every sequence in a step has as many rows."""
        h = self.history
        out = list(draft[:k])
        while len(out) < k:
            tail = (h[-self.n_max :] + out)[-self.n_max :]  # the context's last tokens
            for n in range(min(self.n_max, len(h) + len(out) - 1), 0, -1):
                start = self._index[n].get(tuple(tail[len(tail) - n :]))
                if start is not None:
                    out.extend(h[start + n : start + n + k - len(out)])
                    break
            else:
                out.extend([tail[-1] if tail else 0] * (k - len(out)))
        return out


class DraftGate:
    """Chooses how many drafts a decode step verifies, from what steps have cost here.

    The cost of a step is kept by its shape: B decoding sequences, D of them carrying L drafts
    each (no prompt chunk in the step): the median of the last steps' whole time
    (``llama_decode`` and sampling every row). Rows alone do not tell the cost: llama.cpp, with
    one KV stream per sequence, splits a batch into micro-batches of equal tokens per sequence,
    so four sequences with one row each plus one draft on one of them cost two passes over the
    weights, where one draft on each costs one (measured in process, F32 SmolLM2: 34 ms for
    4 × 1 rows, 57 ms for 2 + 1 + 1 + 1, 43 ms for 4 × 2). So the D sequences always carry the
    same number of drafts: one with fewer of its own gets filler (``NgramIndex.fill``), and
    sequences without drafts of their own may carry filler only, when a step where every
    sequence has L + 1 rows is expected to do better than one where some have one.

    Each sequence has an acceptance rate p (drafts kept ÷ drafts tried up to and including the
    first rejected one, recent runs weighing most, starting from the engine-wide rate); its
    draft j is kept with probability p^j. For each L (and D) the step is expected to emit
    B + (sum of those p^j over the drafts of their own) tokens; the gate picks the L and D with
    the most tokens per second, where L = 0 must be beaten by ``MARGIN`` (the
    rates are estimates, and a sequence's emitted tokens only shorten the batch's life when
    it finishes sooner), and a step with drafts also pays for the graph llama.cpp rebuilds on the
    next step without them (``back``). Drafts that would not beat the margin were they free are not verified
    at all; nor is a shape not measured yet that would not beat it at the least such a step can cost,
    judged from the plain steps measured (``_may_pay``: two passes where only some sequences draft);
    otherwise a shape with drafts not measured yet gets ``FIRST`` drafts per sequence (so it is
    measured, without paying for a long run where rows are dear); a length past the longest
    measured for a shape costs what the line through its two longest measured lengths says (rows
    nearly free where a step is weight-bound, so longer runs get tried there); one choice in ``EXPLORE_EVERY`` takes one draft more than the
    best when that is expected to come within 25 % of it (one in 8 × ``EXPLORE_EVERY`` whatever
    it is expected to give), so the figures near the choice keep up with the machine and the
    context lengths. Exploring is not free: where drafts do not pay, one more draft on some
    sequences costs a whole extra pass over the weights."""

    EXPLORE_EVERY = 16
    WINDOW = 15  # a shape's cost: the median of its last this many steps
    PRIOR = 4.0  # a sequence's rate starts as this many observations at the engine-wide rate
    MARGIN = 1.25  # drafts are verified only where expected to give this much more than none
    DECAY = 0.75  # what a sequence's earlier counts weigh at each new run
    FIRST = 2  # drafts per sequence in the first steps of a shape not measured yet

    def __init__(self) -> None:
        self.cost: dict[tuple[int, int], dict[int, float]] = {}  # (B, sequences drafting) → L → seconds per step
        self.plain: dict[int, float] = {}  # B → seconds per step without drafts
        self._samples: dict[tuple[tuple[int, int], int], int] = {}
        self.kept = 1.0  # engine-wide drafts kept / rejected (decayed counts)
        self.rejected = 1.0
        self._offers = 0
        # B → what the first step without drafts after one with drafts costs more than others:
        # llama.cpp reuses a step's graph only for a batch of the same shape, so going back
        # rebuilds it (~0.5-1 ms here); charged to every step with drafts
        self.back: dict[int, float] = {}
        self._last: tuple[int, int] | None = None  # the last recorded step: (B, L)
        self._recent: dict[Any, deque[float]] = {}
        # steps given drafts, by why: a shape not measured yet, expected to pay best, exploring
        # (one draft more, or the other shape) — what learning costs (engine_stats gate_*)
        self.choices = {"tried": 0, "chosen": 0, "explored": 0}

    def skip(self) -> None:
        """A step not recorded (a prompt chunk in it, streams moved): the next one follows no
        recorded shape."""
        self._last = None

    def record(self, seqs: int, drafting: int, longest: int, seconds: float) -> None:
        """One step's time. A shape's first step is not kept (llama.cpp grows its buffers on the
        first batch of a new size): from its second one on they count. A step without drafts
        right after one with drafts goes to ``back`` instead."""
        prev, self._last = self._last, (seqs, longest)
        if not longest and prev is not None and prev[0] == seqs and prev[1] and seqs in self.plain:
            self.back[seqs] = self._keep(("back", seqs), seconds - self.plain[seqs])
            return
        key = (seqs, drafting if longest else 0)
        n = self._samples.get((key, longest), 0)
        self._samples[(key, longest)] = n + 1
        if n == 0:
            return
        kept = self._keep((key, longest), seconds)
        if longest:
            self.cost.setdefault(key, {})[longest] = kept
        else:
            self.plain[seqs] = kept

    def _keep(self, key: Any, seconds: float) -> float:
        """The median of the last ``WINDOW`` samples under ``key``, this one included. Step
        times are skewed (a preempted thread adds milliseconds, nothing takes them away): a
        mean runs high, and higher on the plain steps, which are most of the samples."""
        recent = self._recent.setdefault(key, deque(maxlen=self.WINDOW))
        recent.append(seconds)
        return statistics.median(recent)

    def estimate(self, seqs: int, drafting: int, longest: int) -> float | None:
        """Seconds for a step of ``seqs`` sequences, ``drafting`` of them with drafts, the longest
        ``longest``: measured, or interpolated between the nearest measured lengths around it
        (the step without drafts counts as length 0: measured, or along the plain steps of other
        sizes, ``_t0``), or past the longest measured along the
        line through the two longest (``_at``); None when nothing at or below ``longest`` was
        measured for this shape, or only the step without drafts."""
        row = self._row(seqs, drafting)
        known = sorted(row)
        i = bisect.bisect_right(known, longest) - 1
        if i < 0 or (known[i] == 0 and longest and i == len(known) - 1):
            return None
        return self._at(row, known, i, longest)

    def _estimates(self, seqs: int, drafting: int, most: int) -> list[float]:
        """``estimate`` for every length 1..``most`` in one pass over the measured lengths; for a
        shape whose step without drafts and at least one length with drafts are measured."""
        row = self._row(seqs, drafting)
        known = sorted(row)
        out: list[float] = []
        i = 0  # known[i]: the longest measured length at or below the one estimated
        for length in range(1, most + 1):
            while i + 1 < len(known) and known[i + 1] <= length:
                i += 1
            out.append(self._at(row, known, i, length))
        return out

    def _row(self, seqs: int, drafting: int) -> dict[int, float]:
        """A shape's measured lengths → seconds, the step without drafts as length 0."""
        row = dict(self.cost.get((seqs, drafting), {}))
        t0 = self._t0(seqs)
        if t0 is not None:
            row[0] = t0
        return row

    def _t0(self, seqs: int) -> float | None:
        """The step of ``seqs`` sequences without drafts: measured, or along the plain steps
        measured for other numbers of sequences (``_at``; below the fewest measured, what that
        costs); None before any plain step is measured."""
        plain = self.plain
        t = plain.get(seqs)
        if t is not None or not plain:
            return t
        known = sorted(plain)
        i = bisect.bisect_right(known, seqs) - 1
        return plain[known[0]] if i < 0 else self._at(plain, known, i, seqs)

    @staticmethod
    def _at(row: dict[int, float], known: list[int], i: int, length: int) -> float:
        """The cost at ``length``, ``known`` the measured lengths in order and ``known[i]`` the
        longest at or below it: measured, interpolated to the next one, or past the longest
        measured along the line through the two longest, never falling. Each further row costs
        what the last ones did: where rows are nearly free (weight-bound) longer runs look cheap
        and get tried; where each costs most of a step they are not tried blindly."""
        lo = known[i]
        if lo == length:
            return row[lo]
        if i + 1 < len(known):
            hi = known[i + 1]
            return row[lo] + (row[hi] - row[lo]) * (length - lo) / (hi - lo)
        slope = max(0.0, (row[lo] - row[known[i - 1]]) / (lo - known[i - 1])) if i else 0.0
        return row[lo] + slope * (length - lo)

    def _may_pay(self, seqs: int, drafting: int, gain: float, t0: float) -> bool:
        """Whether a shape not measured yet could beat the step without drafts (``t0``) by the
        margin, were its expected ``gain`` verified at the least its step can cost, judged from the
        plain steps (``_t0``): where only some sequences draft, llama.cpp splits the batch into two
        passes, the plain step and one over the drafting sequences' rows; where all do, one pass of
        twice the rows, which costs about what the plain step of twice the sequences does."""
        if drafting < seqs:
            least = t0 + (self._t0(drafting) or 0.0)
        else:
            least = max(t0, self._t0(2 * seqs) or 0.0)
        least += max(0.0, self.back.get(seqs, 0.0))
        return (seqs + gain) / least > self.MARGIN * seqs / t0

    def rate(self, kept: float, rejected: float) -> float:
        p = self.kept / (self.kept + self.rejected)
        return (kept + self.PRIOR * p) / (kept + rejected + self.PRIOR)

    def observe(self, seq: tuple[float, float], kept: int, drafted: int) -> tuple[float, float]:
        """One verified run: ``kept`` of ``drafted`` drafts accepted. ``seq`` and the result: the
        sequence's own (kept, rejected) counts, earlier runs weighed by ``DECAY``: acceptance comes in runs
        (an answer copies a passage, then writes its own words), so the last runs say most."""
        rejected = 1 if kept < drafted else 0
        self.kept = 0.98 * self.kept + kept
        self.rejected = 0.98 * self.rejected + rejected
        return self.DECAY * seq[0] + kept, self.DECAY * seq[1] + rejected

    def choose(self, seqs: int, offers: list[tuple[float, int]], spare: int = 0) -> tuple[int, int]:
        """(L, D): every one of D sequences verifies exactly L drafts this step, (0, 0) for none.

        ``offers``: (acceptance rate, drafts offered) of the sequences with drafts of their own;
        ``spare``: how many other decoding sequences could carry filler drafts. A sequence with
        fewer drafts than L gets filler up to L, so that the step's rows are equal per sequence:
        D is either the sequences with drafts or those and the spare ones, whichever is expected
        to give more tokens per second (filler is counted as never kept)."""
        self._offers += 1
        most = max((k for _, k in offers), default=0)
        if most == 0:
            return 0, 0
        # gains[L]: the drafts of their own expected kept when each sequence verifies up to L
        # (a sequence's draft j is kept with probability p^j)
        inc = [0.0] * (most + 1)
        for p, k in offers:
            pj = 1.0
            for j in range(1, k + 1):
                pj *= p
                inc[j] += pj
        gains = list(itertools.accumulate(inc))
        explore = self._offers % (8 * self.EXPLORE_EVERY) == 0
        if seqs + gains[most] <= self.MARGIN * seqs and not explore:
            # would not pay were the drafts free: nothing to try or measure (but now and then
            # one draft is: rates move only when drafts are verified)
            return 0, 0
        shapes = [len(offers)] + ([len(offers) + spare] if spare else [])
        t0 = self._t0(seqs)
        if t0 is None:
            return 0, 0  # nothing to weigh drafts against yet: plain steps measure it
        new = [d for d in shapes if self.estimate(seqs, d, 1) is None]
        if new and not explore:
            # a shape not measured yet is tried only where it could pay at its least cost
            shapes = [d for d in shapes if d not in new or self._may_pay(seqs, d, gains[most], t0)]
        for d in shapes:
            if d in new:
                # a shape not measured yet: try it, with a short run (longer ones follow where
                # the rows prove cheap: the estimate past the longest measured length)
                self.choices["tried"] += 1
                return min(most, self.FIRST), d
        if not shapes:
            return 0, 0
        values: dict[int, list[float]] = {}
        back = max(0.0, self.back.get(seqs, 0.0))
        for d in shapes:
            costs = self._estimates(seqs, d, most)
            values[d] = [self.MARGIN * seqs / t0] + [(seqs + gains[n]) / (t + back) for n, t in enumerate(costs, 1)]
        best_d = max(shapes, key=lambda d: max(values[d]))
        row = values[best_d]
        best_l = max(range(len(row)), key=row.__getitem__)
        why = "chosen"
        if best_l < most and (
            (self._offers % self.EXPLORE_EVERY == 0 and row[best_l + 1] >= 0.75 * row[best_l])
            or explore
        ):
            best_l += 1
            why = "explored"
        elif best_l and len(shapes) > 1 and self._offers % (4 * self.EXPLORE_EVERY) == self.EXPLORE_EVERY // 2:
            best_d = shapes[0] if best_d == shapes[1] else shapes[1]  # keep the other shape's cost current
            why = "explored"
        if not best_l:
            return 0, 0
        self.choices[why] += 1
        return best_l, best_d


@dataclass
class DraftRequest:
    seq_id: int
    history: list[int]  # the target's tokens so far, the last one not yet decoded by the target either
    k: int
    drafts: list[int] = field(default_factory=list)


class DraftModel:
    """A small model proposing drafts greedily, one KV sequence per engine slot."""

    def __init__(
        self, path: str, *, n_parallel: int, n_ctx_seq: int, n_batch: int, n_threads: int, n_gpu_layers: int, extra_buffers: bool = True,
        load_mode: int | None = None,
    ) -> None:
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        mparams.use_extra_bufts = extra_buffers  # as the target's (buffers.py)
        if load_mode is not None:  # as the target's (read into memory for huge pages, hugepages.py)
            mparams.load_mode = load_mode
        self.model = _internals.LlamaModel(path_model=path, params=mparams, verbose=False)
        self.n_vocab = self.model.n_vocab()
        self.n_ctx_seq = min(n_ctx_seq, self.model.n_ctx_train())
        self.n_batch = n_batch
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = self.n_ctx_seq * n_parallel
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, 512)
        # the last: the go-between of ``swap`` (llama.cpp takes at most 256 sequences; the engine
        # swaps no slots then)
        cparams.n_seq_max = min(n_parallel + 1, MAX_SEQ)
        cparams.kv_unified = True
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        self.ctx = _internals.LlamaContext(model=self.model, params=cparams, verbose=False)
        self._rows = LogitRows(self.ctx.ctx, self.n_vocab)
        self.memory = llama_cpp.llama_get_memory(self.ctx.ctx)
        self._batch = Batch(n_batch)
        self._kv: dict[int, list[int]] = {i: [] for i in range(n_parallel)}  # what each sequence's cache holds
        self._spare = n_parallel

    def swap(self, a: int, b: int) -> None:
        """Sequences ``a`` and ``b`` exchange their caches (the engine swapped their slots). One
        unified cache: the cells are relabelled, nothing is copied."""
        mem, t = self.memory, self._spare
        for src, dst in ((a, t), (b, a), (t, b)):
            llama_cpp.llama_memory_seq_rm(mem, dst, -1, -1)
            llama_cpp.llama_memory_seq_cp(mem, src, dst, -1, -1)
        llama_cpp.llama_memory_seq_rm(mem, t, -1, -1)
        self._kv[a], self._kv[b] = self._kv[b], self._kv[a]

    def close(self) -> None:
        self._batch.free()
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
                last = take == len(toks)
                n = self._batch.put_run(n, toks[:take], len(kv), sid, last)
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
                    n = self._batch.put(n, r.drafts[-1], len(kv), sid, True)
                    kv.append(r.drafts[-1])
                    rows.append((sid, n - 1))
            if not n or not self._decode(n, live):
                return
            for sid, i in rows:
                live[sid].drafts.append(self._argmax(i))

    def _decode(self, n: int, live: dict[int, DraftRequest]) -> bool:
        rc = self._batch.decode(self.ctx.ctx, n)
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
        return int(np.argmax(self._rows(i)))


# llama_get_logits_ith with the row's address as a plain int: llama-cpp-python's binding returns a
# float pointer, and numpy's view of one (``np.ctypeslib.as_array``) costs a cast and a new
# array type each call. Called holding the GIL (a lookup that never blocks): letting go of it
# for so short a call could only hand it to another thread for the engine to wait on
_LOGITS_ITH = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32)(
    ctypes.cast(llama_cpp.llama_get_logits_ith, ctypes.c_void_p).value or 0
)


class LogitRows:
    """Read-only numpy views of a context's output rows of logits (valid until its next
    decode), one view kept per address: llama.cpp reuses its output buffer from step to step."""

    _MAX_VIEWS = 512

    def __init__(self, ctx: Any, n_vocab: int) -> None:
        self._ctx = ctx
        self._type = ctypes.c_float * n_vocab
        self._views: dict[int, np.ndarray] = {}

    def __call__(self, row: int) -> np.ndarray:
        addr = _LOGITS_ITH(self._ctx, row)
        if not addr:
            raise RuntimeError(f"llama.cpp has no logits for output row {row}")
        view = self._views.get(addr)
        if view is None:
            if len(self._views) >= self._MAX_VIEWS:  # the buffer moved (it grew): start again
                self._views.clear()
            view = self._views[addr] = np.frombuffer(memoryview(self._type.from_address(addr)), dtype=np.float32)
            view.flags.writeable = False
        return view


class Batch:
    """A ``llama_batch`` of up to ``size`` rows, one sequence id each, written through numpy views of
    its arrays: an item written through ctypes costs about three times as much, and a prompt chunk
    is written with a few slice assignments instead of a loop over its tokens."""

    def __init__(self, size: int) -> None:
        b = self.raw = llama_cpp.llama_batch_init(size, 0, 1)
        self.size = size
        self.token = np.ctypeslib.as_array(b.token, shape=(size,))
        self.pos = np.ctypeslib.as_array(b.pos, shape=(size,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(size,))[:] = 1  # every row is of one sequence
        self.logits = np.ctypeslib.as_array(b.logits, shape=(size,))
        self._seq = [b.seq_id[i] for i in range(size)]  # each row's array of one sequence id

    def put(self, n: int, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Row ``n``: one token of one sequence; the next row's index."""
        self.token[n] = token
        self.pos[n] = pos
        self._seq[n][0] = seq_id
        self.logits[n] = logits
        return n + 1

    def put_run(self, n: int, tokens: list[int], pos: int, seq_id: int, last_logits: bool) -> int:
        """Rows from ``n``: ``tokens`` of one sequence at positions from ``pos``, with logits for the
        last one only if ``last_logits``; the next row's index."""
        end = n + len(tokens)
        self.token[n:end] = tokens
        self.pos[n:end] = np.arange(pos, pos + len(tokens), dtype=np.int32)
        for row in self._seq[n:end]:
            row[0] = seq_id
        self.logits[n:end] = 0
        if last_logits and end > n:
            self.logits[end - 1] = 1
        return end

    def decode(self, ctx: Any, n: int) -> int:
        """``llama_decode`` of the first ``n`` rows; its return code."""
        self.raw.n_tokens = n
        return int(llama_cpp.llama_decode(ctx, self.raw))

    def free(self) -> None:
        if self.size:
            llama_cpp.llama_batch_free(self.raw)
            self.size = 0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
