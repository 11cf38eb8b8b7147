"""Request batching (across HTTP requests): the faces of requests that arrive together go
through each model in one pass. (Not `agegender.onnxgraph.batch_free`, which rewrites a
graph's batch dimension.)

Requests put their prepared images in a queue; one collector task takes the first and,
while other requests are still on their way (being read, decoded or detected: the
`arriving` hint), waits up to a short window for them (up to a batch size); a lone
request never waits. It groups the batch by the options that change inference and runs
each group in a worker thread, so the event loop never runs a model. While a batch
runs, the next requests gather in the queue. With batching off every item runs alone,
through the same single worker: the baseline the load script compares.

`stop()` answers every item not yet answered, queued or in the batch that is running,
with `ShuttingDown`: no request waits for its own timeout at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class ShuttingDown(RuntimeError):
    """The batcher stopped before this item's batch gave its result."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down")


@dataclass
class _Pending(Generic[Item, Result]):
    key: Hashable
    item: Item
    future: asyncio.Future[Result]
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher(Generic[Item, Result]):
    """Runs `run_batch(key, items) -> results` (one result per item, in order) on
    batches gathered from concurrent `submit` calls."""

    def __init__(
        self,
        run_batch: Callable[[Hashable, list[Item]], Sequence[Result]],
        executor: Executor,
        *,
        window_s: float = 0.02,
        max_batch: int = 16,
        on_batch: Callable[[int], None] | None = None,
        arriving: Callable[[], int] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self._executor = executor
        self.window_s = max(0.0, window_s)
        self.max_batch = max_batch
        self._on_batch = on_batch
        self._arriving = arriving or (lambda: 0)
        self._queue: asyncio.Queue[_Pending[Item, Result]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: list[_Pending[Item, Result]] = []  # the batch being collected or run
        self._stopped = False

    @property
    def waiting(self) -> int:
        """Items queued and not yet taken into a batch."""
        return self._queue.qsize() if self._queue is not None else 0

    def start(self) -> None:
        """Start the collector on the running event loop."""
        if self._task is None:
            self._stopped = False
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        """Stop the collector; every item not yet answered (queued, or in the batch that
        is running: its worker thread cannot be interrupted) fails with `ShuttingDown`."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        unanswered = list(self._running)
        self._running = []
        while self._queue is not None and not self._queue.empty():
            unanswered.append(self._queue.get_nowait())
        for pending in unanswered:
            if not pending.future.done():
                pending.future.set_exception(ShuttingDown())

    async def submit(self, key: Hashable, item: Item) -> Result:
        """Queue one item and wait for its result (or the exception its batch raised)."""
        if self._stopped:
            raise ShuttingDown()
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not called")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(key, item, future))
        return await future

    async def _collect(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            self._running = batch
            deadline = time.perf_counter() + self.window_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._arriving() <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            await self._run(batch)
            self._running = []

    async def _run(self, batch: list[_Pending[Item, Result]]) -> None:
        # A request that timed out has cancelled its future: skip its work.
        live = [p for p in batch if not p.future.done()]
        groups: dict[Hashable, list[_Pending[Item, Result]]] = {}
        for pending in live:
            groups.setdefault(pending.key, []).append(pending)
        loop = asyncio.get_running_loop()
        for key, members in groups.items():
            items = [p.item for p in members]
            if self._on_batch is not None:
                self._on_batch(len(items))
            try:
                results: Sequence[Any] = await loop.run_in_executor(
                    self._executor, self._run_batch, key, items
                )
                if len(results) != len(items):
                    raise RuntimeError(f"a batch of {len(items)} gave {len(results)} results")
            except Exception as error:  # the batch's error goes to each of its requests
                for pending in members:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            for pending, result in zip(members, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
