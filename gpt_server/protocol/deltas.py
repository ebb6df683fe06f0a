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
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .worker import TokenLogprob

__all__ = ["DELTA_WRITER", "DeltaWriter"]


class DeltaWriter:
    """One stream's hook for deltas written on the engine thread (module docstring)."""

    __slots__ = ("drained", "kick", "posted", "taken", "write")

    def __init__(self) -> None:
        # set by the worker once it writes the stream itself, both called on the engine thread.
        # ``write``: the delta is taken for the connection, in order (True), or cannot be now
        # (False); ``kick``: send what was taken, called once a step (before the engine blocks)
        self.write: Callable[[int, str, list[TokenLogprob] | None], bool] | None = None  # (index, text, logprobs)
        self.kick: Callable[[], None] | None = None
        self.posted = 0  # events the engine thread handed to the event loop (engine thread)
        self.taken = 0  # deltas ``write`` took (engine thread)
        self.drained = 0  # of those, how many the worker has written (event loop)


# set by a worker around the start of a generation whose stream it may write itself
DELTA_WRITER: ContextVar[DeltaWriter | None] = ContextVar("gpt_server_delta_writer", default=None)
