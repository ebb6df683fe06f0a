"""A stream's text deltas written by the engine's own thread: the contract between a worker
that writes a stream to the client's connection (``transport.direct``) and a token engine
(``backends.textgen.sequences``).

Handing each delta to the worker's event loop costs a wake-up, a queue and a pass through the
stream's async generators per token, and on a small host that work runs beside the next decode.
Where nothing between the engine and the connection changes the deltas (no tool or reasoning
parser), the engine thread renders a delta itself and appends it to the stream's buffer; a
sender thread sends the buffers (woken once a step, before the engine's next decode). Everything
else (the first event, finishes, errors, usage, keep-alives, the stream's end) keeps its path
through the event loop, which writes the buffer first, and the two paths never overtake each
other:

- The worker sets ``DELTA_WRITER`` to a fresh ``DeltaWriter`` before it starts a generation; the
  engine's stream takes it when it starts, if its deltas reach the client unchanged.
- The engine thread counts what it hands to the event loop (``posted``); the stream records
  how many of those the worker has written (``drained``: set whenever it waits for the next
  one, so everything taken before has gone through the generators and the writer).
- The engine writes a delta itself only while ``write`` is set and ``posted == drained``: nothing
  is on its way through the event loop, so nothing it writes overtakes an earlier event.
  ``write`` returns False where the stream is ending: then the delta takes the event loop's
  path, as do all that follow it until the loop has written them.

An answer wanted whole (``GenerateRequest.whole``: the client asked for no stream) uses the same
hook with nothing to send: ``Answer.write`` keeps each delta on the engine thread, the events
that do reach the event loop are added in their turn (``Answer.add``), and the worker sends
each choice's text as one event at the end. The rule above keeps the two in order, since
the engine takes a delta only when every event it posted has been added.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

from .worker import DeltaEvent

if TYPE_CHECKING:
    from .worker import TokenLogprob, ToolCallDelta

__all__ = ["ADMITTED", "DELTA_WRITER", "DeltaWriter", "Answer"]

# what a stream yields first, where its writer asked (``DeltaWriter.announce``), once the engine
# has taken its sequences: past every check that turns a request away (compared by identity;
# never sent)
ADMITTED = DeltaEvent(index=-1, text="")


class DeltaWriter:
    """One stream's hook for deltas written on the engine thread (module docstring)."""

    __slots__ = ("announce", "drained", "kick", "posted", "taken", "write")

    def __init__(self, announce: bool = False) -> None:
        # set by the worker once it writes the stream itself, both called on the engine thread.
        # ``write``: the delta is taken for the connection, in order (True), or cannot be now
        # (False); ``kick``: send what was taken, called once a step (before the engine blocks);
        # ``kick(True)`` sends it from the calling thread (one non-blocking send), ``kick(False)``
        # has another thread send it
        self.write: Callable[[int, str, list[TokenLogprob] | None], bool] | None = None  # (index, text, logprobs)
        self.kick: Callable[[bool], None] | None = None  # None: nothing to send (``Answer``)
        self.posted = 0  # events the engine thread handed to the event loop (engine thread)
        self.taken = 0  # deltas ``write`` took (engine thread)
        self.drained = 0  # of those, how many the worker has written (event loop)
        # the stream yields ``ADMITTED`` first, as soon as the engine has its sequences (the worker
        # then takes the client's connection before the first token, ``transport.direct``)
        self.announce = announce


# set by a worker around the start of a generation whose stream it may write itself
DELTA_WRITER: ContextVar[DeltaWriter | None] = ContextVar("gpt_server_delta_writer", default=None)


class _Choice:
    __slots__ = ("calls", "logprobs", "reasoning", "text")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.reasoning: list[str] = []
        self.calls: list[ToolCallDelta] = []


class Answer:
    """An answer sent whole: each choice's deltas, kept in order by the engine thread
    (``write``, through the stream's ``DeltaWriter``) and by the event loop (``add``) in turn
    (module docstring), sent as one ``DeltaEvent`` a choice (``events``)."""

    __slots__ = ("choices", "first", "writer")

    def __init__(self) -> None:
        self.choices: dict[int, _Choice] = {}
        self.first: float | None = None  # when the first delta came (``time.perf_counter``)
        self.writer = DeltaWriter()

    def take(self) -> None:
        """From now on the engine thread keeps the deltas it may (the first comes through the
        event loop: the worker answers its status line with it, as for any generation)."""
        self.writer.write = self.write

    def _choice(self, index: int) -> _Choice:
        c = self.choices.get(index)
        if c is None:
            c = self.choices[index] = _Choice()
        if self.first is None:
            self.first = time.perf_counter()
        return c

    def write(self, index: int, text: str, logprobs: list[TokenLogprob] | None) -> bool:
        """A delta taken on the engine thread."""
        c = self._choice(index)
        c.text.append(text)
        if logprobs:
            c.logprobs.extend(logprobs)
        return True

    def add(self, ev: DeltaEvent) -> None:
        """A delta the event loop was handed."""
        c = self._choice(ev.index)
        c.text.append(ev.text)
        if ev.logprobs:
            c.logprobs.extend(ev.logprobs)
        if ev.reasoning:
            c.reasoning.append(ev.reasoning)
        if ev.tool_calls:
            c.calls.extend(ev.tool_calls)

    def events(self) -> list[DeltaEvent]:
        """One delta a choice that had any, by index; the engine thread takes no more."""
        self.writer.write = None
        held = 0.0 if self.first is None else time.perf_counter() - self.first
        return [
            DeltaEvent(
                index=i, text="".join(c.text), logprobs=c.logprobs or None, reasoning="".join(c.reasoning) or None,
                tool_calls=c.calls or None, held=held,
            )
            for i, c in sorted(self.choices.items())
        ]
