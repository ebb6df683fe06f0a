"""Run a blocking byte producer in a thread and stream its output to the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator

__all__ = ["stream_from_thread"]

_END = object()


async def stream_from_thread(produce: Callable[[threading.Event], Iterator[bytes]]) -> AsyncIterator[bytes]:
    """Yield what ``produce(stop)`` yields, as soon as it yields it.

    ``produce`` runs in its own thread; when the consumer stops early (client gone),
    ``stop`` is set and the producer should return at its next check. An exception in
    the producer is raised here.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def put(item: object) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def run() -> None:
        try:
            for chunk in produce(stop):
                if stop.is_set():
                    break
                if chunk:
                    put(chunk)
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(exc)

    thread = threading.Thread(target=run, name="audio-producer", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
