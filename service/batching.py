"""Dynamic batching: a bounded queue per model, batches formed by size or delay.

Producers never block: when the queue holds `max_queue_size` items, `submit` raises QueueFull
at once. The worker takes the first item, waits at most `max_delay_s` for more (up to
`max_batch_size`), drops items whose caller gave up or whose deadline passed, runs the batch off
the event loop, and fans the result (or the failure) out to every waiter of that batch.
All asyncio objects are created inside the running loop (in `start`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from service.errors import DeadlineExceeded, InferenceFailed, ModelNotReady, QueueFull

log = logging.getLogger(__name__)

RunBatch = Callable[[np.ndarray], np.ndarray]


@dataclass
class BatchStats:
    """What one batch observed; handed to the `on_batch` hook (metrics)."""

    size: int
    queue_seconds: list[float]
    inference_seconds: float
    expired: int


@dataclass
class _Item:
    tensor: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float
    deadline: float | None = None
    done: bool = field(default=False)


class Batcher:
    """Batches single-image tensors for one model version onto `run_batch`."""

    def __init__(
        self,
        run_batch: RunBatch,
        executor: Executor,
        max_batch_size: int = 8,
        max_delay_s: float = 0.002,
        max_queue_size: int = 256,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_size = max_queue_size
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue else 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def submit(self, tensor: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """Queue one image tensor; returns its output row. Raises QueueFull when full."""
        if self._queue is None or self._closing:
            raise ModelNotReady("model is not accepting requests")
        if self._queue.qsize() >= self.max_queue_size:
            raise QueueFull(f"queue is full ({self.max_queue_size} images waiting); retry later")
        loop = asyncio.get_running_loop()
        item = _Item(tensor, loop.create_future(), time.monotonic(), deadline)
        self._queue.put_nowait(item)
        self._report_depth()
        return await item.future

    async def close(self) -> None:
        """Stop taking items, finish every queued one, then stop the worker."""
        self._closing = True
        if self._queue is not None and self._task is not None:
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _report_depth(self) -> None:
        if self._on_depth is not None and self._queue is not None:
            self._on_depth(self._queue.qsize())

    async def _collect(self) -> list[_Item]:
        assert self._queue is not None
        items = [await self._queue.get()]
        until = time.monotonic() + self.max_delay_s
        while len(items) < self.max_batch_size:
            if not self._queue.empty():
                items.append(self._queue.get_nowait())
                continue
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        self._report_depth()
        return items

    async def _work(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            try:
                await self._run(items, loop)
            except Exception:  # never let the worker die: the batch was already failed
                log.exception("batch worker error")
            finally:
                for _ in items:
                    self._queue.task_done()

    async def _run(self, items: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        live: list[_Item] = []
        expired = 0
        for item in items:
            if item.future.done():  # the caller gave up (cancelled)
                continue
            if item.deadline is not None and now >= item.deadline:
                item.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                expired += 1
                continue
            live.append(item)
        if not live:
            return
        started = time.monotonic()
        try:
            batch = np.stack([item.tensor for item in live])
            out = await loop.run_in_executor(self._executor, self._run_batch, batch)
            if len(out) != len(live):
                raise RuntimeError(f"model returned {len(out)} rows for a batch of {len(live)}")
        except Exception as exc:
            log.error("inference failed on a batch of %d: %r", len(live), exc, exc_info=exc)
            for item in live:
                if not item.future.done():
                    item.future.set_exception(InferenceFailed("inference failed"))
            return
        elapsed = time.monotonic() - started
        for item, row in zip(live, out, strict=True):
            if not item.future.done():
                item.future.set_result(row)
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    size=len(live),
                    queue_seconds=[started - item.enqueued for item in live],
                    inference_seconds=elapsed,
                    expired=expired,
                )
            )
