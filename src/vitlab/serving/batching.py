"""Dynamic batching: concurrent requests share one forward pass.

Requests put their prepared image on an asyncio queue and await a future. One collector task takes the first
waiting item, waits a short window (or until a full batch is queued) for others, and hands the batch to one
worker thread that runs the model; while it runs, the next batch queues up. One thread owns the model, so
the model is never run concurrently and the event loop never blocks on it.

A request whose client went away (its future cancelled) is dropped before its batch runs; a batch that fails
fails only its own requests, with the error; the collector keeps going.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .errors import RequestError


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    dropped: int = 0  # requests abandoned before their batch ran
    largest: int = 0

    def as_dict(self) -> dict:
        mean = self.images / self.batches if self.batches else 0.0
        return {"batches": self.batches, "images": self.images, "mean_batch": round(mean, 2),
                "largest_batch": self.largest, "dropped": self.dropped}


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future = field(repr=False)


class Batcher:
    """`await batcher.submit(item)` -> that item's result from `run_batch(items) -> results` (same order)."""

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], *, max_batch: int = 32,
                 window_ms: float = 5.0, max_queue: int = 1024, timeout_s: float = 60.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.run_batch, self.max_batch, self.window = run_batch, max_batch, window_ms / 1000.0
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._collector: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitlab-model")
        self._collector = asyncio.create_task(self._collect_forever(), name="vitlab-batcher")

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():  # nobody will run these any more
            fail([self._queue.get_nowait()], RequestError(503, "the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._collector = self._executor = None

    async def submit(self, item: Any) -> Any:
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(item, future))
        except asyncio.QueueFull:
            raise RequestError(503, f"the server is busy ({self.max_queue} images waiting); try again") from None
        try:
            return await asyncio.wait_for(future, self.timeout_s)  # cancels the future on timeout or disconnect
        except asyncio.TimeoutError:
            raise RequestError(503, f"no result within {self.timeout_s:g} s; the server is overloaded") from None

    async def _collect_forever(self) -> None:
        while True:
            batch: list[_Pending] = []
            try:
                await self._next_batch(batch)
                await self._run(batch)
            except asyncio.CancelledError:  # stop(): whatever was taken from the queue is answered
                fail(batch, RequestError(503, "the server is shutting down"))
                raise

    async def _run(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]
        self.stats.dropped += len(batch) - len(live)
        if not live:
            return
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, [p.item for p in live])
        except Exception as e:  # noqa: BLE001 - the batch's requests get the error; serving goes on
            fail(live, e)
            return
        self.stats.batches += 1
        self.stats.images += len(live)
        self.stats.largest = max(self.stats.largest, len(live))
        for p, result in zip(live, results):
            if not p.future.done():
                p.future.set_result(result)

    async def _next_batch(self, batch: list[_Pending]) -> None:
        """Into `batch`: the first waiting item, then whatever else arrives within the window, up to max_batch."""
        batch.append(await self._queue.get())
        deadline = time.monotonic() + self.window
        while self.max_batch > 1 and self._queue.qsize() < self.max_batch - 1:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(remaining, 0.001))
        while len(batch) < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())


def fail(batch: list[_Pending], error: Exception) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(error)
