"""A batched llama.cpp decode loop on the low-level API of llama-cpp-python.

One context holds ``n_parallel`` sequences (slots). Every step builds one
``llama_batch`` with the next token of every decoding sequence plus prompt chunks of
newly admitted ones, decodes it once and samples each sequence on its own — the
way llama.cpp's own server does. A slot keeps its KV cache after a request ends, so
a later prompt that shares a prefix (multi-turn chat) skips that part.

Speculative decoding (``EngineOptions.speculative``): a decoding sequence's next token goes
into the batch with up to k drafted tokens after it (prompt lookup or a draft model, see
``speculative.py``), logits at every position. ``_verify`` samples each position with the
sequence's own sampler, in order, and keeps going while the sampled token is the draft
that is already in the cache; the first other token is emitted and ends the run. Every
emitted token is sampled from the same context as without drafts, so greedy output is the
same token for token and a seeded sampler makes the same draws. Rejected positions leave
the KV cache (``llama_memory_seq_rm``) and the slot's ``tokens``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals

from ...protocol.worker import SamplingParams, TokenLogprob
from ..textgen.engine_thread import EngineThread
from ..textgen.sampling import SamplerState
from ..textgen.sequences import SeqEvent, finish, release_events, sample_step
from ..textgen.textstream import TextStream
from . import SpeculativeOptions, hugepages
from .buffers import use_extra_buffers
from .speculative import (
    MAX_SEQ,
    Batch,
    DraftGate,
    DraftModel,
    DraftRequest,
    LogitRows,
    NgramIndex,
    common_prefix,
)

__all__ = ["EngineOptions", "LlamaEngine", "Sequence"]

# a prompt "continues" a slot's cache when it shares all of it but this many tokens: the
# template may render the previous answer's end differently from the tokens generated
_CONTINUE_SLACK = 4
# most decode steps a sequence goes without drafts after its drafts were rejected
_MAX_BACKOFF = 32
# a cached prefix in another slot is copied in when it saves at least this many prompt tokens:
# copying a KV stream costs about two prefilled tokens (SmolLM2, 2048 cells per stream)
_MIN_COPY = 8

log = logging.getLogger(__name__)

_backend_lock = threading.Lock()
_backend_ready = False


def _backend_init() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_backend_init()
            _backend_ready = True


@dataclass
class EngineOptions:
    model_path: str
    n_ctx: int | None = None  # per sequence
    n_parallel: int = 4
    n_threads: int | None = None
    n_batch: int = 512
    n_gpu_layers: int = 0
    speculative: SpeculativeOptions | None = None
    repack: bool | None = None  # llama.cpp's extra weight buffers (buffers.py; default: off on AMX CPUs)
    nice: int = 0  # nice steps of the engine thread and ggml's threads below the process (EngineThread)
    hugepages: bool = False  # weights read into memory backed by 2 MiB pages (hugepages.py), where the OS allows
    # after a sequence finishes, the longest wait (seconds) for the request that follows it before
    # the next step (textgen/turnaround.py): -1 weighed against a recent step, None never
    turnaround_hold: float | None = -1


@dataclass
class Sequence:
    index: int
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    sink: Callable[[SeqEvent], None]
    cancelled: threading.Event
    # engine-side state
    sampler: SamplerState | None = None
    text: TextStream | None = None
    slot: int = -1
    n_past: int = 0  # tokens of this sequence already in the KV cache
    cached: int = 0  # prompt tokens found in the cache at admission (not prefilled)
    generated: list[int] = field(default_factory=list)
    next_token: int = -1
    pending_lp: list[TokenLogprob] = field(default_factory=list)
    done: bool = False
    constraint: Any = None  # chat.structured.GrammarConstraint, or None
    speculate: bool = True  # drafts allowed (the engine's ``speculative`` option decides if any)
    lookup: NgramIndex | None = None
    spec_backoff: int = 0  # steps to skip drafting after a poor run (doubles, reset by a good one)
    spec_skip: int = 0
    spec_kept: float = 0.0  # this sequence's drafts kept, and runs ended by a rejected one (DraftGate.rate)
    spec_rejected: float = 0.0
    spec_own: int = 0  # of this step's drafts, how many are its own (the rest: filler, DraftGate)


@dataclass
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds
    seq: Sequence | None = None
    used: int = 0  # admission clock when a sequence last took the slot (LRU)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the platform tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class LlamaEngine(EngineThread[Sequence, None]):
    """Owns the model, one context and the decode thread."""

    def __init__(self, opts: EngineOptions) -> None:
        _backend_init()
        self.opts = opts
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = opts.n_gpu_layers
        mparams.use_extra_bufts = use_extra_buffers(opts.repack)
        # with huge pages the weights are read into this process's memory, not mapped from the file
        before = hugepages.anon_mappings() if opts.hugepages and hugepages.available() else None
        if before is not None:
            mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
        self.model = _internals.LlamaModel(path_model=opts.model_path, params=mparams, verbose=False)
        self.vocab = self.model.vocab
        threads = opts.n_threads or 1
        # compute threads on every core the process may use: another thread woken to send a
        # stream's deltas would take a core from one of them mid-step (the others then wait at
        # the step's next barrier), so this thread sends them itself, just before each decode
        super().__init__(
            n_vocab=self.model.n_vocab(), thread_name="llama-engine", label="llama.cpp", nice=opts.nice,
            send_here=opts.n_gpu_layers == 0 and threads >= usable_cpus(),
        )
        self.hold_cap = opts.turnaround_hold
        n_ctx_train = self.model.n_ctx_train()
        self.n_ctx_seq = min(opts.n_ctx or min(4096, n_ctx_train), n_ctx_train)
        self.n_parallel = opts.n_parallel
        self.n_batch = max(opts.n_batch, self.n_parallel)
        # with several slots, one stream more than slots: the go-between when two slots swap
        # their streams (``_compact``); no sequence ever decodes in it
        self._spare: int | None = self.n_parallel if 1 < self.n_parallel < MAX_SEQ else None
        n_streams = self.n_parallel + (self._spare is not None)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = self.n_ctx_seq * n_streams
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = min(self.n_batch, 512)
        cparams.n_seq_max = n_streams
        # one KV stream per slot (as llama-server with a fixed --parallel): a step's attention
        # reads each sequence's own cells only, not every slot's cached prompts, and a
        # sequence's logits do not depend on what the other slots hold
        cparams.kv_unified = False
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        self.ctx = _internals.LlamaContext(model=self.model, params=cparams, verbose=False)
        # n_parallel streams of n_ctx_seq cells: every slot (including the prefix it keeps for
        # reuse) is capped at n_ctx_seq, so a stream cannot run out
        self._rows = LogitRows(self.ctx.ctx, self.n_vocab)
        self.memory = llama_cpp.llama_get_memory(self.ctx.ctx)
        self._batch = Batch(self.n_batch)
        self._slots = [_Slot(seq_id=i) for i in range(self.n_parallel)]
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._clock = 0
        self._put_off = False  # the last step put its compaction off (``_decode_step``)
        self.spec = opts.speculative
        self.gate = DraftGate() if self.spec is not None else None
        self.draft: DraftModel | None = None
        if self.spec is not None and self.spec.mode == "draft":
            assert self.spec.draft_model is not None
            self.draft = DraftModel(
                self.spec.draft_model, n_parallel=self.n_parallel, n_ctx_seq=self.n_ctx_seq, n_batch=self.n_batch,
                n_threads=threads, n_gpu_layers=self.spec.draft_n_gpu_layers, extra_buffers=mparams.use_extra_bufts,
                load_mode=mparams.load_mode,
            )
            if self.draft.n_vocab != self.n_vocab:
                n = self.draft.n_vocab
                self.draft.close()
                self.ctx.close()
                self.model.close()
                raise ValueError(f"the draft model's vocabulary ({n} tokens) differs from the model's ({self.n_vocab})")
        # speculative decoding: tokens drafted, drafts accepted, decode steps that verified drafts
        # (of them filler, and filler kept: rows that make every drafting sequence's rows equal)
        self.spec_stats = {"drafted": 0, "accepted": 0, "verify_steps": 0, "filler": 0, "filler_accepted": 0}
        # decode steps, the batch tokens they decoded, and where each step's time went: inside
        # llama_decode, and on this thread around it (building the batch, sampling, detokenizing,
        # handing the events over), which llama.cpp's own threads wait through
        # (and ``swaps``: two slots' streams exchanged to keep the slots in use adjacent)
        self.step_stats = {"steps": 0, "tokens": 0, "decode_us": 0, "host_us": 0, "swaps": 0}
        # the memory the model, its context (and a draft model) took: in 2 MiB pages from here on
        self.hugepages_bytes = 0
        if before is not None:
            self.hugepages_bytes = hugepages.collapse_new(before)
            log.info("llama.cpp engine: %d MiB of its memory in huge pages", self.hugepages_bytes >> 20)
        self._start_thread()

    # ---- tokens -------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        return self.model.metadata()

    def chat_template(self) -> str | None:
        raw = llama_cpp.llama_model_chat_template(self.model.model, None)
        return raw.decode("utf-8") if raw else None

    def token_text(self, token: int) -> str:
        return self.model.token_get_text(token)

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
        out = buf.raw[:n]
        self._pieces[token] = out
        return out

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def decode_text(self, tokens: list[int]) -> str:
        """``tokens`` as text with special tokens written out (what /detokenize answers;
        ``detokenize`` drops them, as generated text must). Ids must be in the vocabulary."""
        if not tokens:
            return ""
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        cap = len(tokens) * 8 + 16
        buf = ctypes.create_string_buffer(cap)
        n = llama_cpp.llama_detokenize(self.vocab, arr, len(tokens), buf, cap, False, True)
        if n < 0:
            cap = -n
            buf = ctypes.create_string_buffer(cap)
            n = llama_cpp.llama_detokenize(self.vocab, arr, len(tokens), buf, cap, False, True)
        return buf.raw[:n].decode("utf-8", errors="replace")

    def add_bos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
        return eog

    def close(self) -> None:
        self._stop_thread(timeout=10)
        self._batch.free()
        if self.draft is not None:
            self.draft.close()
        self.ctx.close()
        self.model.close()

    # ---- the loop -----------------------------------------------------------
    def _fail_running(self, error: str) -> None:
        for slot in self._slots:
            if slot.seq is not None:
                self._finish(slot, None, error=error)

    def _step(self, admitted: None) -> None:
        self._drop_cancelled()
        if self._busy():
            t0 = time.perf_counter()
            done = self._decode_step()
            if done is not None:
                n, in_decode = done
                st = self.step_stats
                st["steps"] += 1
                st["tokens"] += n
                st["decode_us"] += round(in_decode * 1e6)
                st["host_us"] += round((time.perf_counter() - t0 - in_decode) * 1e6)

    def _running(self) -> int:
        return sum(slot.seq is not None for slot in self._slots)

    def _busy(self) -> bool:
        for slot in self._slots:  # checked a few times a step: a plain loop, not a generator
            if slot.seq is not None:
                return True
        return False

    def _admit(self) -> None:
        """Move waiting sequences into free slots, reusing the longest cached prefix.

        The slot a sequence takes is the one whose cache it continues (a later turn of
        the same chat) or mostly repeats, else an empty one, else the least recently used:
        other slots' caches stay for the prompts they hold. The longest cached prefix of the prompt,
        in whichever slot it is (running ones too), is then copied into that slot when it is
        at least ``_MIN_COPY`` tokens longer than what the slot holds: ``llama_memory_seq_cp``
        copies the source's KV stream (done at the next decode, a memcpy of the stream) and the
        tail past the prefix is dropped. So a repeated prompt or a shared system prompt is
        prefilled once, whatever slot it lands in.
        """
        while self._waiting:
            free = [s for s in self._slots if s.seq is None]
            if not free:
                return
            seq = self._waiting.popleft()
            if seq.cancelled.is_set():
                seq.sink(SeqEvent(index=seq.index, finish_reason="abort"))
                continue
            limit = len(seq.prompt) - 1  # the last prompt token is always decoded
            common = {id(slot): min(common_prefix(slot.tokens, seq.prompt), limit) for slot in self._slots}
            target = _choose_slot(free, common, len(seq.prompt))
            src = max(self._slots, key=lambda slot: common[id(slot)])
            reuse = common[id(target)]
            if common[id(src)] >= reuse + _MIN_COPY and src is not target:
                reuse = common[id(src)]
                # across streams llama.cpp copies a whole sequence (p0 0, p1 -1): copy, then cut
                llama_cpp.llama_memory_seq_cp(self.memory, src.seq_id, target.seq_id, 0, -1)
                llama_cpp.llama_memory_seq_rm(self.memory, target.seq_id, reuse, -1)
                target.tokens = src.tokens[:reuse]
            else:
                llama_cpp.llama_memory_seq_rm(self.memory, target.seq_id, reuse, -1)
                target.tokens = target.tokens[:reuse]
            self._clock += 1
            target.used = self._clock
            target.seq = seq
            seq.slot = target.seq_id
            seq.n_past = seq.cached = reuse

    def _drop_cancelled(self) -> None:
        for slot in self._slots:
            if slot.seq is not None and slot.seq.cancelled.is_set():
                self._finish(slot, "abort")

    def _decode_step(self) -> tuple[int, float] | None:
        """One batch decoded and its outputs sampled: (batch tokens, seconds in llama_decode);
        None when there was nothing to decode or the decode failed."""
        b = self._batch
        t_step = time.perf_counter()
        # slots apart are brought together a step after a prompt is read in: a swap's copies run in
        # the next decode, and in a new sequence's first step they would delay its first token
        # (one step only: where prompts come every step, apart slots would cost every step a pass)
        if self._reading() and not self._put_off:
            swapped, self._put_off = False, True
        else:
            swapped, self._put_off = self._compact(), False
        n = 0
        prefill: list[tuple[_Slot, int]] = []  # (slot, prompt tokens added)
        outputs: list[tuple[_Slot, int]] = []  # prompts' last positions
        verify: list[tuple[_Slot, int, list[int]]] = []  # (slot, row of next_token, drafts after it)
        decoding = [slot for slot in self._slots if slot.seq is not None and slot.seq.n_past >= len(slot.seq.prompt)]
        drafts = self._drafts(decoding, self.n_batch - len(decoding)) if self.spec is not None else {}
        # 1) one token for every decoding sequence, and its drafts
        for slot in decoding:
            s = slot.seq
            assert s is not None
            verify.append((slot, n, drafts.get(slot.seq_id, [])))
            n = b.put(n, s.next_token, s.n_past, slot.seq_id, True)
            for j, tok in enumerate(verify[-1][2]):
                n = b.put(n, tok, s.n_past + 1 + j, slot.seq_id, True)
        # 2) prompt chunks with the remaining budget
        for slot in self._slots:
            s = slot.seq
            if s is None or s.n_past >= len(s.prompt) or n >= self.n_batch:
                continue
            take = min(len(s.prompt) - s.n_past, self.n_batch - n)
            last = s.n_past + take == len(s.prompt)
            n = b.put_run(n, s.prompt[s.n_past : s.n_past + take], s.n_past, slot.seq_id, last)
            if last:
                outputs.append((slot, n - 1))
            prefill.append((slot, take))
        if n == 0:
            return None
        release_events()  # the event loops run while this thread is in llama_decode, off the GIL
        t0 = time.perf_counter()
        rc = b.decode(self.ctx.ctx, n)
        in_decode = time.perf_counter() - t0
        if rc != 0:
            msg = f"llama_decode failed with code {rc}"
            log.error(msg)
            for slot in self._slots:
                if slot.seq is not None:
                    llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
                    slot.tokens = []
                    self._finish(slot, None, error=msg)
            return None
        for slot, count in prefill:
            s = slot.seq
            assert s is not None
            slot.tokens.extend(s.prompt[s.n_past : s.n_past + count])
            s.n_past += count
        for slot, row, drafted in verify:
            try:
                self._verify(slot, row, drafted)
            except Exception as exc:  # noqa: BLE001 - one sequence's sampling failed: it ends, the others go on
                self._sampling_failed(slot, exc)
        for slot, i in outputs:
            s = slot.seq
            if s is None:
                continue
            try:
                self._sample(slot, s, self._logits(i))
            except Exception as exc:  # noqa: BLE001 - as above
                self._sampling_failed(slot, exc)
        if self.gate is not None:
            if prefill or swapped:
                self.gate.skip()
            else:  # every row sampled: what a step of this shape costs
                longest = max(map(len, drafts.values()), default=0)
                self.gate.record(len(decoding), len(drafts), longest, time.perf_counter() - t_step)
        return n, in_decode

    def _reading(self) -> bool:
        """A sequence's prompt is (still) being read into its slot."""
        for slot in self._slots:
            s = slot.seq
            if s is not None and s.n_past < len(s.prompt):
                return True
        return False

    def _compact(self) -> bool:
        """Keep the slots in use adjacent; whether any moved.

        With one KV stream per slot, llama.cpp splits a batch into micro-batches of consecutive
        sequence ids: sequences in slots 0 and 2 cost two passes over the weights where slots 0
        and 1 cost one (bench/README.md, ``python -m bench.kv_streams``). So when the slots in use
        are not side by side (a sequence finished before the others, a returning prompt took its
        old slot), each one outside the window of slots that holds most of them swaps streams
        with an idle slot inside it. A swap is three copies of a stream through the spare one
        (queued by llama.cpp, done at the next decode), so the idle slot's cached prompt is kept,
        only in another slot."""
        if self._spare is None:
            return False
        used = [slot.seq is not None for slot in self._slots]
        k = sum(used)
        first = used.index(True) if k else 0
        if k == 0 or used[first : first + k] == [True] * k:
            return False
        window = max(range(len(used) - k + 1), key=lambda w: sum(used[w : w + k]))
        idle = [i for i in range(window, window + k) if not used[i]]
        outside = [i for i, u in enumerate(used) if u and not window <= i < window + k]
        for i, j in zip(idle, outside, strict=True):
            self._swap(i, j)
        return True

    def _swap(self, i: int, j: int) -> None:
        """Slots ``i`` and ``j`` exchange their KV streams and what they hold."""
        spare, mem = self._spare, self.memory
        assert spare is not None
        for src, dst in ((i, spare), (j, i), (spare, j)):  # llama.cpp copies in this order
            llama_cpp.llama_memory_seq_cp(mem, src, dst, -1, -1)
        llama_cpp.llama_memory_seq_rm(mem, spare, -1, -1)
        a, b = self._slots[i], self._slots[j]
        a.tokens, b.tokens = b.tokens, a.tokens
        a.seq, b.seq = b.seq, a.seq
        a.used, b.used = b.used, a.used
        for slot in (a, b):
            if slot.seq is not None:
                slot.seq.slot = slot.seq_id
        if self.draft is not None:
            self.draft.swap(i, j)
        self.step_stats["swaps"] += 1

    def _logits(self, row: int) -> np.ndarray:
        """A read-only view of ``row``'s logits in llama.cpp's buffer (valid until the next
        decode; ``sample_step`` copies them where it changes them)."""
        return self._rows(row)

    def _drafts(self, decoding: list[_Slot], budget: int) -> dict[int, list[int]]:
        """Drafts per slot for the decoding sequences that may have them, ``budget`` tokens in all.

        A sequence drafts no more than it may still emit after its next token (max_tokens, its
        context), none while a grammar constrains it, and none of its own for a few steps after a run whose
        drafts were mostly rejected (1, 2, 4 … ``_MAX_BACKOFF`` steps). Of what is proposed,
        ``DraftGate`` keeps as many as are expected to raise the tokens per second, from the
        measured cost of a step by its shape and each sequence's acceptance rate. With prompt
        lookup every drafting sequence then gets exactly that many rows, filler after its own
        drafts (``NgramIndex.fill``), and the gate may give filler to the other sequences that
        may draft (those backing off included) where one pass of equal rows is cheaper."""
        spec, gate = self.spec, self.gate
        assert spec is not None and gate is not None
        want: list[tuple[_Slot, Sequence, int]] = []
        spare: list[tuple[_Slot, Sequence, int]] = []  # may carry filler drafts only
        for slot in decoding:
            s = slot.seq
            assert s is not None
            s.spec_own = 0
            if not s.speculate or s.constraint is not None:
                continue
            k = min(spec.num_draft_tokens, s.max_tokens - len(s.generated) - 1, self.n_ctx_seq - s.n_past - 2)
            if k <= 0:
                continue
            if s.spec_skip > 0:
                s.spec_skip -= 1
                spare.append((slot, s, k))
            else:
                want.append((slot, s, k))
        if self.draft is not None:
            reqs: list[DraftRequest] = []
            for slot, s, k in want:
                k = min(k, budget - sum(r.k for r in reqs))
                if k > 0:
                    reqs.append(DraftRequest(seq_id=slot.seq_id, history=s.prompt + s.generated, k=k))
            self.draft.propose(reqs)
            out = {r.seq_id: r.drafts[: r.k] for r in reqs if r.drafts}
            if not out:
                return out
            offers = [(self._rate(sid), len(d)) for sid, d in out.items()]
            longest, _ = gate.choose(len(decoding), offers)
            return self._own(out, longest)
        own: dict[int, list[int]] = {}
        limit: dict[int, tuple[Sequence, int]] = {}
        for slot, s, k in want + spare:
            if s.lookup is None:
                s.lookup = NgramIndex(spec.ngram_min, spec.ngram_max)
            s.lookup.sync(s.prompt, s.generated)
            limit[slot.seq_id] = (s, k)
        for slot, s, k in want:
            assert s.lookup is not None
            got = s.lookup.propose(k)
            if got:
                own[slot.seq_id] = got
        if not own:
            return own
        offers = [(self._rate(sid), len(d)) for sid, d in own.items()]
        longest, carriers = gate.choose(len(decoding), offers, len(limit) - len(own))
        longest = min(longest, budget // carriers) if carriers else 0
        if not longest:
            return {}
        out = self._own(own, longest)
        if len(decoding) == 1:
            return out  # one sequence: its rows are one pass however many
        # every carrier gets ``longest`` rows (its own drafts first, filler after): equal rows
        # per sequence make the step one pass over the weights (DraftGate)
        for sid, (s, k) in limit.items():
            if sid in out or carriers > len(own):
                assert s.lookup is not None
                out[sid] = s.lookup.fill(out.get(sid, []), min(longest, k))
        return out

    def _rate(self, seq_id: int) -> float:
        s = self._slots[seq_id].seq
        assert self.gate is not None
        return self.gate.rate(s.spec_kept, s.spec_rejected) if s is not None else 0.0

    def _own(self, proposed: dict[int, list[int]], longest: int) -> dict[int, list[int]]:
        """Each sequence's own drafts, at most ``longest``; noted on it for ``_verify``."""
        out = {sid: d[:longest] for sid, d in proposed.items()} if longest else {}
        for sid, d in out.items():
            s = self._slots[sid].seq
            assert s is not None
            s.spec_own = len(d)
        return out

    def _verify(self, slot: _Slot, row: int, drafts: list[int]) -> None:
        """After the decode: sample the positions of ``slot``'s next token and its drafts in
        order, keeping each draft the sampler agrees with; the first other token (or a finish)
        ends the run. Rejected drafts leave the KV cache."""
        s = slot.seq
        assert s is not None
        slot.tokens.append(s.next_token)
        s.n_past += 1
        reason: str | None = None
        accepted = 0
        for j in range(len(drafts) + 1):
            tok, reason = sample_step(
                s, self._logits(row + j), is_eos=self.is_eog, piece=self.piece, text_of=self._text_of,
                context_full=s.n_past + 1 >= self.n_ctx_seq,
            )
            if reason is not None:
                break
            if j < len(drafts) and tok == drafts[j]:  # already in the cache at n_past
                slot.tokens.append(tok)
                s.n_past += 1
                accepted += 1
                continue
            s.next_token = tok
            break
        if drafts:
            own = min(s.spec_own, len(drafts))
            self.spec_stats["drafted"] += len(drafts)
            self.spec_stats["accepted"] += accepted
            self.spec_stats["verify_steps"] += 1
            self.spec_stats["filler"] += len(drafts) - own
            self.spec_stats["filler_accepted"] += max(0, accepted - own)
            if accepted < len(drafts):
                llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, s.n_past, -1)
            if own:  # the rate and the backoff judge the sequence's own drafts, not filler
                kept = min(accepted, own)
                assert self.gate is not None
                s.spec_kept, s.spec_rejected = self.gate.observe((s.spec_kept, s.spec_rejected), kept, own)
                # drafts that keep failing (free text) cost batch rows for nothing: back off
                good = 2 * kept >= own
                s.spec_backoff = 0 if good else min(2 * s.spec_backoff or 1, _MAX_BACKOFF)
                s.spec_skip = s.spec_backoff
        if reason is not None:
            self._finish(slot, reason)

    def _sample(self, slot: _Slot, s: Sequence, logits: np.ndarray) -> None:
        tok, reason = sample_step(
            s,
            logits,
            is_eos=self.is_eog,
            piece=self.piece,
            text_of=self._text_of,
            context_full=s.n_past + 1 >= self.n_ctx_seq,
        )
        if reason is not None:
            self._finish(slot, reason)
        else:
            s.next_token = tok

    def _sampling_failed(self, slot: _Slot, exc: Exception) -> None:
        """End the slot's sequence with an error (its cache is dropped: the failure may have come
        between drafts kept and drafts removed)."""
        log.error("sampling failed; ending that sequence", exc_info=exc)
        llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
        slot.tokens = []
        self._finish(slot, None, error=f"sampling failed ({type(exc).__name__})")

    def _text_of(self, tok: int) -> tuple[str, list[int]]:
        piece = self.piece(tok)
        return piece.decode("utf-8", errors="replace"), list(piece)

    def _finish(self, slot: _Slot, reason: str | None, error: str | None = None) -> None:
        s = slot.seq
        if s is not None:  # noted before the slot frees: a request that comes meanwhile follows it
            self._finished()
        slot.seq = None
        if s is not None:
            finish(s, reason, error)

def _choose_slot(free: list[_Slot], common: dict[int, int], prompt_len: int) -> _Slot:
    """The free slot a new sequence takes: the one whose cache it continues (the prompt covers
    what the slot holds, bar the last few tokens: a later turn) or holds all of (the same
    request again, which then runs on the same cells as before — llama.cpp's numbers depend a
    little on where in the cache a sequence's cells lie), else an empty one, else the least
    recently used (a prompt sharing only a system prompt with a slot must not overwrite it)."""
    best = max(free, key=lambda s: common[id(s)])
    n = common[id(best)]
    if best.tokens and (n >= len(best.tokens) - _CONTINUE_SLACK or n >= prompt_len - 1):
        return best
    empty = [s for s in free if not s.tokens]
    if empty:
        return empty[0]
    return min(free, key=lambda s: s.used)

