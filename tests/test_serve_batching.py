"""The batching collector on its own: grouping, errors, cancellation, the window."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from agegender.serve.request_batching import Batcher, ShuttingDown

T = TypeVar("T")


class Recorder:
    """A batch function that squares numbers and remembers each batch it ran."""

    def __init__(self, fail_key: Hashable | None = None) -> None:
        self.batches: list[tuple[Hashable, list[int]]] = []
        self.threads: set[str] = set()
        self.fail_key = fail_key

    def __call__(self, key: Hashable, items: list[int]) -> list[int]:
        self.batches.append((key, list(items)))
        self.threads.add(threading.current_thread().name)
        if key == self.fail_key:
            raise ValueError(f"batch {key} failed")
        return [i * i for i in items]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_items_arriving_together_share_a_batch_grouped_by_key() -> None:
    recorder = Recorder()

    async def main() -> list[int]:
        with ThreadPoolExecutor(1, thread_name_prefix="model") as pool:
            batcher: Batcher[int, int] = Batcher(
                recorder, pool, window_s=60, max_batch=6, arriving=lambda: 1
            )
            batcher.start()
            # The sixth item closes the batch (max_batch), not the window.
            results = await asyncio.gather(
                *(batcher.submit("a" if i % 2 else "b", i) for i in range(6))
            )
            await batcher.stop()
            return results

    assert run(main()) == [0, 1, 4, 9, 16, 25]
    assert sorted(recorder.batches) == [("a", [1, 3, 5]), ("b", [0, 2, 4])]
    assert all(name.startswith("model") for name in recorder.threads)


def test_max_batch_splits_batches() -> None:
    recorder = Recorder()

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher: Batcher[int, int] = Batcher(
                recorder, pool, window_s=0.2, max_batch=2, arriving=lambda: 1
            )
            batcher.start()
            await asyncio.gather(*(batcher.submit("k", i) for i in range(5)))
            await batcher.stop()

    run(main())
    assert [len(items) for _, items in recorder.batches] == [2, 2, 1]


def test_a_lone_item_does_not_wait_for_the_window() -> None:
    recorder = Recorder()

    async def main() -> int:
        with ThreadPoolExecutor(1) as pool:
            batcher: Batcher[int, int] = Batcher(
                recorder, pool, window_s=3600.0, max_batch=8, arriving=lambda: 0
            )
            batcher.start()
            # Nothing else is on its way: answered at once, not after the hour's window
            # (the 60 s is a hang guard, not a speed limit).
            result = await asyncio.wait_for(batcher.submit("k", 3), 60)
            await batcher.stop()
            return result

    assert run(main()) == 9


def test_a_failing_batch_fails_only_its_own_items() -> None:
    recorder = Recorder(fail_key="bad")

    async def main() -> list[object]:
        with ThreadPoolExecutor(1) as pool:
            batcher: Batcher[int, int] = Batcher(
                recorder, pool, window_s=60, max_batch=3, arriving=lambda: 1
            )
            batcher.start()
            results = await asyncio.gather(
                batcher.submit("bad", 1),
                batcher.submit("good", 2),
                batcher.submit("bad", 3),
                return_exceptions=True,
            )
            await batcher.stop()
            return results

    bad1, good, bad3 = run(main())
    assert good == 4
    assert isinstance(bad1, ValueError) and isinstance(bad3, ValueError)
    assert str(bad1) == "batch bad failed"


def test_cancelled_items_are_not_run() -> None:
    recorder = Recorder()

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher: Batcher[int, int] = Batcher(
                recorder, pool, window_s=60, max_batch=3, arriving=lambda: 1
            )
            batcher.start()
            doomed = asyncio.ensure_future(batcher.submit("k", 7))
            kept = asyncio.ensure_future(batcher.submit("k", 8))
            while batcher.waiting or len(batcher._running) < 2:
                await asyncio.sleep(0.001)  # both taken into the open batch
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            # The third item fills the batch (max_batch): it runs without the cancelled one.
            assert await batcher.submit("k", 9) == 81
            assert await kept == 64
            await batcher.stop()

    run(main())
    assert recorder.batches == [("k", [8, 9])]


def test_submit_before_start_is_an_error() -> None:
    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher: Batcher[int, int] = Batcher(Recorder(), pool)
            with pytest.raises(RuntimeError, match="start"):
                await batcher.submit("k", 1)

    run(main())


def test_stop_fails_the_batch_in_flight_and_later_submits() -> None:
    # Issue 8, defect 7: stop() cancelled the collector but left the futures of the batch
    # that was running unanswered, so their requests hung until their own timeout.
    entered = threading.Event()
    release = threading.Event()

    def stuck(key: Hashable, items: list[int]) -> list[int]:
        entered.set()
        release.wait(30)  # a model run that cannot be interrupted
        return items

    async def main() -> tuple[object, object, object]:
        with ThreadPoolExecutor(1) as pool:
            batcher: Batcher[int, int] = Batcher(stuck, pool, window_s=0.0, max_batch=8)
            batcher.start()
            running = asyncio.ensure_future(batcher.submit("k", 1))
            while not entered.is_set():
                await asyncio.sleep(0.005)
            queued = asyncio.ensure_future(batcher.submit("k", 2))
            await asyncio.sleep(0)
            try:
                await batcher.stop()
                results = await asyncio.wait_for(
                    asyncio.gather(running, queued, return_exceptions=True), 30
                )
                late = await asyncio.gather(batcher.submit("k", 3), return_exceptions=True)
            finally:
                release.set()
            return results[0], results[1], late[0]

    running, queued, late = run(main())
    for outcome in (running, queued, late):
        assert isinstance(outcome, ShuttingDown), outcome
        assert "shutting down" in str(outcome)
