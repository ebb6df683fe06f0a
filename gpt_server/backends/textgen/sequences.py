"""What every token-level engine does per sequence, written once.

An engine thread owns the model; for each sequence it hands the logits of the last
position to ``sample_step``, which samples (penalties, grammar, logprobs), feeds the
text stream (stop strings, UTF-8) and reports deltas and the finish through the
sequence's ``sink``. ``stream_sequences`` is the asyncio side: it submits the
sequences and turns what the sinks report into protocol events.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ...errors import InternalError
from ...protocol.deltas import ADMITTED, DELTA_WRITER
from ...protocol.worker import (
    DeltaEvent,
    ErrorEvent,
    Event,
    FinishEvent,
    TokenLogprob,
    TopLogprob,
    UsageEvent,
)
from .sampling import SamplerState, log_softmax, sample_token
from .textstream import TextStream

__all__ = [
    "SeqEvent", "SeqLike", "sample_step", "emit", "finish", "token_logprob", "stream_sequences", "hold_events", "release_events",
]

log = logging.getLogger(__name__)


class _Outbox(threading.local):
    """Per thread: the events its sequences reported that wait for ``release_events`` (None:
    each goes to its event loop at once)."""

    held: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any], Any]] | None = None
    kicks: list[Callable[[bool], None]] | None = None  # deltas written on this thread: their writers, to start
    send_here = False  # the writers send on this thread (``hold_events``)


_outbox = _Outbox()


def hold_events(send_here: bool = False) -> None:
    """On an engine thread: the events its sequences report from now on wait until
    ``release_events``, which hands them over together (one wake-up per event loop).
    ``send_here``: the deltas this thread writes for its streams are sent from this thread, in
    ``release_events``, not by the sender thread (``EngineThread.send_here``).

    Handing each event over at once wakes the event loop in the middle of the step's host work
    (sampling the other sequences, building the next batch). Every ctypes call there lets go of
    the GIL, the woken loop takes it and writes its streams' events, and the engine thread waits
    for it with llama.cpp's threads idle; released just before the engine blocks (the next decode,
    an idle wait), the loop runs while the engine does not need the GIL."""
    _outbox.held = []
    _outbox.kicks = []
    _outbox.send_here = send_here


def release_events() -> None:
    """Hand the held events to their event loops, in order, and start the writers of the deltas
    written on this thread (``protocol.deltas``) (see ``hold_events``)."""
    kicks = _outbox.kicks
    if kicks:
        _outbox.kicks = []
        here = _outbox.send_here
        for kick in kicks:
            kick(here)
    held = _outbox.held
    if not held:
        return
    _outbox.held = []
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], Any]]] = {}
    for loop, queue, ev in held:
        by_loop.setdefault(loop, []).append((queue, ev))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, items)
        except RuntimeError:  # that loop has closed: nobody is waiting for these
            pass


def _deliver(items: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    for queue, ev in items:
        queue.put_nowait(ev)


@dataclass
class SeqEvent:
    """What the engine thread reports for one sequence."""

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: str | None = None


class SeqLike(Protocol):
    index: int
    params: Any
    max_tokens: int
    sampler: SamplerState | None
    text: TextStream | None
    generated: list[int]
    pending_lp: list[TokenLogprob]
    done: bool
    constraint: Any

    @property
    def sink(self) -> Callable[[SeqEvent], None]: ...


def token_logprob(tok: int, lp: np.ndarray, top: int, text_of: Callable[[int], tuple[str, list[int]]]) -> TokenLogprob:
    """The logprob entry of ``tok`` with its ``top`` alternatives (``text_of`` → text, bytes)."""
    text, raw = text_of(tok)
    entry = TokenLogprob(token=text, logprob=float(lp[tok]), bytes=raw)
    if top:
        best = np.argpartition(-lp, top - 1)[:top]
        for t in best[np.argsort(-lp[best], kind="stable")]:
            ttext, traw = text_of(int(t))
            entry.top_logprobs.append(TopLogprob(token=ttext, logprob=float(lp[t]), bytes=traw))
    return entry


def emit(s: SeqLike, text: str) -> None:
    if not text:
        return
    lps = s.pending_lp or None
    s.pending_lp = []
    s.sink(SeqEvent(index=s.index, text=text, logprobs=lps))


def finish(s: SeqLike, reason: str | None, error: str | None = None) -> None:
    """Report the end of a sequence once (with any logprobs still waiting for text)."""
    if s.done:
        return
    s.done = True
    lps = s.pending_lp or None
    s.pending_lp = []
    s.sink(SeqEvent(index=s.index, logprobs=lps, finish_reason=reason, completion_tokens=len(s.generated), error=error))


def sample_step(
    s: SeqLike,
    logits: np.ndarray,
    *,
    is_eos: Callable[[int], bool],
    piece: Callable[[int], bytes],
    text_of: Callable[[int], tuple[str, list[int]]],
    context_full: bool,
    hook: Callable[[list[int], np.ndarray], np.ndarray] | None = None,
) -> tuple[int, str | None]:
    """Sample the next token of ``s`` and emit its text; (token, finish reason or None).

    ``logits`` are read, never changed (a copy is made where bias, penalties, a grammar or
    ``hook`` change them): an engine may pass a view of its own buffer. The caller releases its
    own resources (slot, batch row) when a reason comes back, then calls ``finish``.
    ``context_full``: no room for another token after this one.
    """
    assert s.sampler is not None and s.text is not None
    if s.sampler.plain_greedy and s.constraint is None and hook is None:
        tok = int(logits.argmax())  # what the full path below comes to, in fewer steps (one a token)
        s.generated.append(tok)
    else:
        p = s.params
        lp = log_softmax(logits) if p.logprobs else None
        if s.sampler.modifies or s.constraint is not None or hook is not None:
            logits = logits.copy()
        processed = s.sampler.process(logits)
        if s.constraint is not None:
            s.constraint.mask(processed)
        if hook is not None:
            processed = hook(s.generated, processed)
        tok = sample_token(processed, s.sampler)
        s.sampler.accept(tok)
        if s.constraint is not None and not s.constraint.accept(tok):
            log.error("grammar rejected token %d", tok)
        s.generated.append(tok)
        if lp is not None:
            s.pending_lp.append(token_logprob(tok, lp, p.top_logprobs, text_of))
    if is_eos(tok):
        emit(s, s.text.flush())
        return tok, "stop"
    text = s.text.push(piece(tok))
    if s.text.stopped:
        emit(s, text)
        return tok, "stop"
    if len(s.generated) >= s.max_tokens or context_full:
        emit(s, text + s.text.flush())
        return tok, "length"
    emit(s, text)
    return tok, None


async def stream_sequences(
    make: Callable[[Callable[[SeqEvent], None], threading.Event], list[Any]],
    submit: Callable[[list[Any]], None],
    wake: Callable[[], None],
    *,
    prompt_tokens: int,
    echo: Callable[[Any], str] | None = None,
    per_prompt: int = 1,
    unchanged: bool = False,
) -> AsyncIterator[Event]:
    """Run sequences on an engine thread; their deltas, finishes and one usage event.

    ``make(sink, cancelled)`` builds the sequences; leaving early (client gone) sets
    ``cancelled`` and wakes the engine so it drops them at its next step. ``unchanged``: the
    caller passes the deltas on as they are (no parser), so the worker may take them on the
    engine thread (``protocol.deltas``), and have ``ADMITTED`` first where it asked.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[SeqEvent] = asyncio.Queue()
    cancelled = threading.Event()
    direct = DELTA_WRITER.get() if unchanged else None

    def sink(ev: SeqEvent) -> None:
        if direct is not None:
            write, kick = direct.write, direct.kick
            if (
                write is not None
                and direct.posted == direct.drained
                and ev.finish_reason is None
                and ev.error is None
                and write(ev.index, ev.text, ev.logprobs)
            ):
                direct.taken += 1
                if kick is not None:  # something to send
                    kicks = _outbox.kicks
                    if kicks is None:
                        kick(False)
                    elif kick not in kicks:
                        kicks.append(kick)
                return
            direct.posted += 1
        held = _outbox.held  # the engine thread's, when it holds events for one hand-over
        if held is None:
            loop.call_soon_threadsafe(queue.put_nowait, ev)
        else:
            held.append((loop, queue, ev))

    seqs: Sequence[Any] = make(sink, cancelled)
    try:
        if echo is not None:
            for s in seqs:
                yield DeltaEvent(index=s.index, text=echo(s))
        submit(list(seqs))
        if direct is not None and direct.announce and echo is None:
            yield ADMITTED
        remaining, completion, taken = len(seqs), 0, 0
        while remaining:
            if direct is not None:  # what was taken before has been written (protocol.deltas)
                direct.drained = taken
            ev = await queue.get()
            taken += 1
            if ev.text or ev.logprobs:
                yield DeltaEvent(index=ev.index, text=ev.text, logprobs=ev.logprobs)
            if ev.error is not None:
                err = InternalError(ev.error)
                yield ErrorEvent(status=err.status, type=err.openai_type, message=ev.error, code="engine_error")
                return
            if ev.finish_reason is not None:
                remaining -= 1
                completion += ev.completion_tokens
                yield FinishEvent(index=ev.index, finish_reason=ev.finish_reason)
        # ``cached``: prompt tokens the engine took from its cache, once per prompt (its first choice)
        cached = sum(int(getattr(s, "cached", 0)) for s in seqs if s.index % per_prompt == 0)
        yield UsageEvent(prompt_tokens=prompt_tokens, completion_tokens=completion, cached_tokens=cached)
    finally:
        cancelled.set()
        wake()
