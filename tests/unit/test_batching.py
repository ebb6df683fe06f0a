"""The dynamic batcher: grouping, splitting, failure isolation, off-loop execution."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gpt_server.backends.batching import BatcherClosedError, DynamicBatcher


class Recorder:
    """A blocking run_batch that doubles numbers, records batches and the thread it ran on."""

    def __init__(self, delay: float = 0.0, raise_on: int | None = None, reject: int | None = None) -> None:
        self.delay = delay
        self.raise_on = raise_on
        self.reject = reject
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()

    def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        self.threads.add(threading.get_ident())
        if self.delay:
            time.sleep(self.delay)
        if self.raise_on is not None and self.raise_on in items:
            raise RuntimeError("engine failed on this batch")
        return [ValueError(f"bad item {x}") if x == self.reject else x * 2 for x in items]


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_concurrent_requests_share_a_batch_and_results_split_in_order() -> None:
    rec = Recorder()

    async def main() -> list[list[int]]:
        b = DynamicBatcher(rec, max_batch_size=64, max_wait_ms=5)
        out = await asyncio.gather(*(b.submit([10 * i, 10 * i + 1, 10 * i + 2]) for i in range(8)))
        await b.close()
        return out

    out = run(main())
    assert out == [[20 * i, 20 * i + 2, 20 * i + 4] for i in range(8)]
    assert len(rec.batches) == 1 and len(rec.batches[0]) == 24


def test_batches_never_exceed_max_size_and_big_requests_are_chunked() -> None:
    rec = Recorder(delay=0.01)

    async def main() -> tuple[list[int], list[list[int]]]:
        b = DynamicBatcher(rec, max_batch_size=4, max_wait_ms=2)
        big = await b.submit(list(range(11)))
        many = await asyncio.gather(*(b.submit([i, i]) for i in range(9)))
        await b.close()
        return big, many

    big, many = run(main())
    assert big == [2 * i for i in range(11)]
    assert many == [[2 * i, 2 * i] for i in range(9)]
    assert all(len(batch) <= 4 for batch in rec.batches)
    assert any(len(batch) == 4 for batch in rec.batches)


def test_a_bad_item_fails_only_its_own_request() -> None:
    rec = Recorder(reject=13)

    async def main() -> list[object]:
        b = DynamicBatcher(rec, max_batch_size=32, max_wait_ms=5)
        res = await asyncio.gather(b.submit([1, 2]), b.submit([12, 13]), b.submit([3]), return_exceptions=True)
        await b.close()
        return res

    ok1, bad, ok2 = run(main())
    assert ok1 == [2, 4] and ok2 == [6]
    assert isinstance(bad, ValueError) and "13" in str(bad)
    assert len(rec.batches) == 1  # they did share the batch


def test_a_batch_that_raises_is_retried_request_by_request() -> None:
    rec = Recorder(raise_on=99)

    async def main() -> list[object]:
        b = DynamicBatcher(rec, max_batch_size=32, max_wait_ms=5)
        res = await asyncio.gather(b.submit([1]), b.submit([99, 5]), b.submit([7, 8]), return_exceptions=True)
        await b.close()
        return res

    a, bad, c = run(main())
    assert rec.batches == [[1, 99, 5, 7, 8], [1], [99, 5], [7, 8]]  # one shared batch, then each request alone
    assert a == [2] and c == [14, 16]
    assert isinstance(bad, RuntimeError)


def test_forward_runs_off_the_event_loop_which_stays_responsive() -> None:
    rec = Recorder(delay=0.3)

    async def main() -> int:
        b = DynamicBatcher(rec, max_batch_size=8, max_wait_ms=0)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        await b.submit([1, 2, 3])
        t.cancel()
        await b.close()
        return ticks

    ticks = run(main())
    assert threading.get_ident() not in rec.threads
    assert ticks >= 10  # the loop kept running while the batch slept 0.3 s


def test_lone_request_runs_at_once_but_concurrent_traffic_waits_for_the_window() -> None:
    rec = Recorder()

    async def main() -> tuple[float, int]:
        b = DynamicBatcher(rec, max_batch_size=32, max_wait_ms=400)
        t0 = time.perf_counter()
        await b.submit([1])  # idle engine, lone request: no waiting
        lone = time.perf_counter() - t0
        await asyncio.gather(b.submit([2]), b.submit([3]))  # concurrent traffic seen
        rec.batches.clear()

        async def late() -> list[int]:
            await asyncio.sleep(0.05)  # arrives inside the window
            return await b.submit([5])

        await asyncio.gather(b.submit([4]), late())
        n = len(rec.batches)
        await b.close()
        return lone, n

    lone, batches = run(main())
    assert lone < 0.2
    assert batches == 1  # the late request joined the waiting batch


def test_requests_queued_behind_a_running_batch_start_when_it_ends_without_the_window() -> None:
    """Under concurrent traffic a batch on an idle engine waits for the window, but requests that
    queued while a batch ran have waited already: theirs starts the moment the engine is free."""
    rec = Recorder(delay=0.2)
    starts: list[float] = []

    def timed(items: list[int]) -> list[int | BaseException]:
        starts.append(time.perf_counter())
        return rec(items)

    async def main() -> None:
        b = DynamicBatcher(timed, max_batch_size=32, max_wait_ms=400)
        await asyncio.gather(b.submit([1]), b.submit([2]))  # concurrent traffic seen
        starts.clear()
        rec.batches.clear()
        first = asyncio.gather(b.submit([3]), b.submit([4]))  # waits for the window (0.4 s), then runs 0.2 s

        async def behind() -> list[int]:
            await asyncio.sleep(0.45)  # queues while that batch runs
            return await b.submit([5])

        await asyncio.gather(first, behind())
        await b.close()

    run(main())
    assert rec.batches == [[3, 4], [5]]
    gap = starts[1] - starts[0]
    assert 0.19 < gap < 0.3, gap  # at the end of the first batch's 0.2 s, not 0.4 s of window later


def test_first_request_after_a_burst_does_not_wait_once_the_engine_went_idle() -> None:
    """Concurrent traffic arms the window (right after it, a request still waits for company:
    the test above); an engine idle since then for ten windows runs the next lone request at once."""
    rec = Recorder()

    async def main() -> float:
        b = DynamicBatcher(rec, max_batch_size=32, max_wait_ms=150)
        await asyncio.gather(b.submit([1]), b.submit([2]))
        await asyncio.gather(b.submit([3]), b.submit([4]))  # concurrent traffic seen
        await asyncio.sleep(0.15 * 10 + 0.2)  # then idle for more than ten windows
        t0 = time.perf_counter()
        await b.submit([5])
        idle = time.perf_counter() - t0
        await b.close()
        return idle

    assert run(main()) < 0.1  # before: 0.15 s, the window of a burst long gone


def test_cancelled_request_is_dropped_and_close_fails_the_queue() -> None:
    rec = Recorder(delay=0.2)

    async def main() -> None:
        b = DynamicBatcher(rec, max_batch_size=1, max_wait_ms=0)
        first = asyncio.create_task(b.submit([1]))
        await asyncio.sleep(0.05)  # the first batch is running
        second = asyncio.create_task(b.submit([2]))
        await asyncio.sleep(0.01)
        second.cancel()
        assert await first == [2]
        await asyncio.sleep(0.05)
        assert [2] not in rec.batches
        queued = asyncio.create_task(b.submit([3]))
        blocker = asyncio.create_task(b.submit([4]))
        await asyncio.sleep(0.01)
        await b.close()
        for t in (queued, blocker):
            with pytest.raises((BatcherClosedError, asyncio.CancelledError)):
                await t
        with pytest.raises(BatcherClosedError):
            await b.submit([5])

    run(main())


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), max_batch_size=0)
    with pytest.raises(ValueError):
        DynamicBatcher(Recorder(), max_wait_ms=-1)


def test_shutdown_refuses_new_requests() -> None:
    rec = Recorder()

    async def main() -> None:
        b = DynamicBatcher(rec, max_batch_size=4, max_wait_ms=0)
        assert await b.submit([1]) == [2]
        b.shutdown()
        with pytest.raises(BatcherClosedError):
            await b.submit([2])

    run(main())


def test_a_lone_request_runs_from_its_own_task_and_what_comes_meanwhile_is_batched_after_it() -> None:
    """A request on an idle engine runs without the batch loop; requests that arrive while it
    runs wait, then go together in one batch; its own failures stay its own."""
    rec = Recorder(delay=0.1, reject=7)

    async def main() -> None:
        b = DynamicBatcher(rec, max_batch_size=32, max_wait_ms=5)
        first = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0.02)  # it runs now
        assert b._task is None  # the batch loop was never needed
        rest = await asyncio.gather(b.submit([2]), b.submit([3]), b.submit([4]))
        assert await first == [2] and rest == [[4], [6], [8]]
        assert rec.batches == [[1], [2, 3, 4]]
        with pytest.raises(ValueError, match="bad item 7"):
            await asyncio.sleep(0.3) or await b.submit([7])  # idle again: lone, and its bad item is its error
        cancelled = asyncio.ensure_future(b.submit([8]))
        await asyncio.sleep(0.02)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert await b.submit([9]) == [18]  # runs after the abandoned one, which the thread finishes
        assert rec.batches[-2:] == [[8], [9]]
        await b.close()

    run(main())


def test_then_runs_on_the_engine_thread_for_a_lone_request_only_and_its_errors_stay_there() -> None:
    """``submit(items, then=...)``: ``then(outputs)`` runs right after a request that ran on its
    own, on the engine's thread; a request batched with others skips it; an error in ``then``
    does not fail the request, nor an item's error reach ``then``."""
    rec = Recorder(delay=0.05, reject=7)

    async def main() -> None:
        b = DynamicBatcher(rec, max_batch_size=32, max_wait_ms=5)
        seen: list[tuple[list[int], int]] = []

        def then(outs: list[int]) -> None:
            seen.append((outs, threading.get_ident()))

        assert await b.submit([1, 2], then=then) == [2, 4]
        assert seen == [([2, 4], next(iter(rec.threads)))]
        seen.clear()
        outs = await asyncio.gather(b.submit([3], then=then), b.submit([4], then=then))  # together: no then
        assert outs == [[6], [8]] and seen == [] and rec.batches[-1] == [3, 4]
        await asyncio.sleep(0.3)  # idle again

        def broken(outs: list[int]) -> None:
            raise RuntimeError("then failed")

        assert await b.submit([5], then=broken) == [10]
        with pytest.raises(ValueError, match="bad item 7"):
            await b.submit([7], then=then)
        assert seen == []
        await b.close()

    run(main())
