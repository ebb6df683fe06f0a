"""A dynamic batcher for engines that take batches (embeddings, rerank, classifiers).

Requests submit lists of items; the batcher groups the items of requests that arrive
close together (up to ``max_batch_size`` items) and runs them through one blocking
``run_batch`` call on a dedicated thread, so forward passes never run on the event loop.
Results are split back per request, in order.

Waiting policy: a lone request on an idle engine runs at once (no added latency at
concurrency 1), from its own task: no hand-over to the batch loop and back, which was three
event-loop passes of every request at c=1. Once traffic is concurrent (the last batch held several requests, or
requests were queued behind it), a new batch on an idle engine waits up to ``max_wait_ms`` for more
requests before it starts, unless it is already full. Requests that arrive while a
batch runs queue for the next one, which starts as soon as the engine is free: they have
waited already, and an engine kept idle for company costs throughput (int8 ONNX at 32
clients: ~3 ms idle after every ~20 ms batch). Traffic stops counting as concurrent once the
engine has sat idle for ``IDLE_RESET_WINDOWS`` windows (at least ``IDLE_RESET_MIN_S``): the
first request after a burst does not wait for company that is not coming.

Failure isolation: ``run_batch`` may return an exception instance in place of an
item's output (a bad input found while preparing it): only the request holding that
item fails. If ``run_batch`` raises for a batch of several requests, each request is
run again on its own, so one bad input fails only its own request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["DynamicBatcher", "BatcherClosedError"]

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741 - item type
O = TypeVar("O")  # noqa: E741 - output type


IDLE_RESET_WINDOWS = 10
IDLE_RESET_MIN_S = 0.02


class BatcherClosedError(RuntimeError):
    """The batcher was closed before the request ran."""


@dataclass
class _Job(Generic[I]):
    items: list[I]
    future: asyncio.Future[list[Any]] = field(repr=False)


class DynamicBatcher(Generic[I, O]):
    """Group items of concurrent requests into batches for a blocking ``run_batch``.

    ``run_batch(items) -> outputs`` must return one output per item (or an exception
    instance for an item that cannot be processed) and must not depend on which other
    items share the batch.
    """

    def __init__(
        self,
        run_batch: Callable[[list[I]], Sequence[O | BaseException]],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 3.0,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.name = name
        self._queue: deque[_Job[I]] = deque()
        self._pending = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._task: asyncio.Task[None] | None = None
        self._concurrent = False
        self._idle_reset = max(IDLE_RESET_WINDOWS * self.max_wait, IDLE_RESET_MIN_S)
        self._last_done = 0.0  # loop time the last batch finished
        self._backlog = False  # requests queued while the last batch ran
        self._busy = False  # a lone request runs (``_run_lone``)
        self._running = False  # the batch loop runs a batch
        self._closed = False

    # ---- public -----------------------------------------------------------------
    async def submit(self, items: Sequence[I], then: Callable[[list[O]], None] | None = None) -> list[O]:
        """Run ``items`` (possibly together with other requests' items); their outputs.
        ``then(outputs)``: run on the engine's thread right after them when the request ran on its
        own and none of its outputs is an error (a request batched with others skips it); its
        errors are logged, never raised."""
        if self._closed:
            raise BatcherClosedError(f"{self.name} is closed")
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if self._lone(len(items), loop):
            return await self._run_lone(list(items), loop, then)
        self._ensure_started()
        futures: list[asyncio.Future[list[Any]]] = []
        for start in range(0, len(items), self.max_batch_size):
            job = _Job(list(items[start : start + self.max_batch_size]), loop.create_future())
            self._queue.append(job)
            self._pending += len(job.items)
            futures.append(job.future)
        self._wakeup.set()
        try:
            parts = [await futures[0]] if len(futures) == 1 else await asyncio.gather(*futures)
        except BaseException:
            for f in futures:
                f.cancel()  # queued parts are dropped, not run
            raise
        return [out for part in parts for out in part]

    def _lone(self, n: int, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a request of ``n`` items finds the engine idle and traffic not concurrent: it
        then runs at once from its own task (no hand-over to the batch loop and back)."""
        if self._busy or self._queue or self._running or n > self.max_batch_size:
            return False
        if self._concurrent and loop.time() - self._last_done <= self._idle_reset:
            return False
        self._concurrent = False
        return True

    async def _run_lone(self, items: list[I], loop: asyncio.AbstractEventLoop, then: Callable[[list[O]], None] | None) -> list[O]:
        self._busy = True
        ran = False
        job: _Job[I] | None = None
        try:
            await asyncio.sleep(0)  # requests submitted in the same pass go together, through the loop
            if self._queue:
                job = _Job(items, loop.create_future())
                self._queue.appendleft(job)
                self._pending += len(items)
            else:
                ran = True
                outputs = await self._call(items, then)
        finally:
            self._busy = False
            if ran:
                # requests that queued meanwhile run next, at once: they may have come after its
                # answer left from the engine's thread (``then``), so they are not taken for company
                self._last_done = loop.time()
            if self._queue:
                self._ensure_started()
                self._wakeup.set()
        if job is not None:
            try:
                return await job.future
            except BaseException:
                job.future.cancel()
                raise
        for out in outputs:
            if isinstance(out, BaseException):
                raise out
        return list(outputs)  # type: ignore[arg-type]

    def shutdown(self) -> None:
        """Refuse new requests and release the thread (sync; for a backend's ``close``).

        Call it after in-flight requests have drained; ``close`` also fails queued ones.
        """
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Stop the loop and fail queued requests."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(BatcherClosedError(f"{self.name} is closed"))
        self._pending = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- loop -------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    async def _loop(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            backlog = False  # the queued requests waited behind a run: they go at once
            while self._busy:  # a lone request runs: what queued meanwhile goes as one batch after it
                backlog = True
                self._wakeup.clear()
                await self._wakeup.wait()
            backlog = backlog or self._backlog
            if self._concurrent and asyncio.get_running_loop().time() - self._last_done > self._idle_reset:
                self._concurrent = False  # idle since the last burst: this request is alone
            if self._concurrent and not backlog:
                await self._gather_window()
            batch = self._take()
            had_backlog = bool(self._queue)
            if not batch:
                continue
            self._concurrent = len(batch) > 1 or had_backlog
            self._running = True
            try:
                await self._run(batch)
                self._last_done = asyncio.get_running_loop().time()
                self._backlog = bool(self._queue)
            except asyncio.CancelledError:
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(BatcherClosedError(f"{self.name} is closed"))
                raise
            finally:
                self._running = False

    async def _gather_window(self) -> None:
        """Wait up to ``max_wait`` for more items, unless a full batch is already queued."""
        if self.max_wait <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while self._pending < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Job[I]]:
        batch: list[_Job[I]] = []
        size = 0
        while self._queue:
            job = self._queue[0]
            if job.future.done():  # cancelled by its caller
                self._queue.popleft()
                self._pending -= len(job.items)
                continue
            if batch and size + len(job.items) > self.max_batch_size:
                break
            self._queue.popleft()
            self._pending -= len(job.items)
            batch.append(job)
            size += len(job.items)
        return batch

    async def _run(self, batch: list[_Job[I]]) -> None:
        items = [it for job in batch for it in job.items]
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: batch of %d items from %d requests (%d queued)", self.name, len(items), len(batch), self._pending)
        try:
            outputs = await self._call(items)
        except Exception as exc:  # noqa: BLE001 - isolate the culprit below
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            log.warning("%s: a batch of %d requests failed (%s); running them one by one", self.name, len(batch), exc)
            for job in batch:
                if job.future.done():
                    continue
                try:
                    _settle(job, await self._call(job.items))
                except Exception as exc2:  # noqa: BLE001
                    _fail(job, exc2)
            return
        offset = 0
        for job in batch:
            _settle(job, outputs[offset : offset + len(job.items)])
            offset += len(job.items)

    async def _call(self, items: list[I], then: Callable[[list[O]], None] | None = None) -> Sequence[O | BaseException]:
        loop = asyncio.get_running_loop()
        if then is None:
            outputs = await loop.run_in_executor(self._executor, self._run_batch, items)
        else:
            outputs = await loop.run_in_executor(self._executor, self._run_then, items, then)
        if len(outputs) != len(items):
            raise RuntimeError(f"{self.name}: run_batch returned {len(outputs)} outputs for {len(items)} items")
        return outputs


    def _run_then(self, items: list[I], then: Callable[[list[O]], None]) -> Sequence[O | BaseException]:
        outputs = self._run_batch(items)
        if len(outputs) == len(items) and not any(isinstance(o, BaseException) for o in outputs):
            try:
                then(list(outputs))  # type: ignore[arg-type]
            except Exception:
                log.exception("%s: finishing a result on the engine's thread failed", self.name)
        return outputs


def _settle(job: _Job[Any], outputs: Sequence[Any]) -> None:
    if job.future.done():
        return
    for out in outputs:
        if isinstance(out, BaseException):
            job.future.set_exception(out)
            return
    job.future.set_result(list(outputs))


def _fail(job: _Job[Any], exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
