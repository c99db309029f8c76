"""Dynamic batching: a bounded priority queue per model version, batches formed by size or delay.

Producers never block: when the queue holds `max_queue_size` items, `submit` raises QueueFull
at once. One worker per model instance takes the most urgent item (lowest priority level
first, then arrival order), waits at most `max_delay_s` for more (up to `max_batch_size`, or
until a preferred batch size is reached and nothing else is waiting), drops items whose caller
gave up or whose deadline passed, runs the batch off the event loop on its own instance, and
fans the result (or the failure) out to every waiter of that batch.
All asyncio objects are created inside the running loop (in `start`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.errors import DeadlineExceeded, InferenceFailed, ModelNotReady, QueueFull

log = logging.getLogger(__name__)

RunBatch = Callable[[np.ndarray], np.ndarray]


@dataclass
class BatchStats:
    """What one batch observed; handed to the `on_batch` hook (metrics, statistics)."""

    size: int
    queue_seconds: list[float]
    input_seconds: float
    """Assembling the batch tensor."""
    inference_seconds: float
    """The engine run."""
    expired: int
    """Items dropped because their deadline passed in the queue."""


class Admission:
    """A request's reservation of room in a batcher (see Batcher.admit)."""

    def __init__(self, batcher: Batcher, images: int) -> None:
        self._batcher = batcher
        self.remaining = images

    def release(self, images: int) -> None:
        images = min(images, self.remaining)
        self.remaining -= images
        self._batcher._waiting -= images


@dataclass(order=True)
class _Item:
    level: int
    seq: int
    tensor: np.ndarray = field(compare=False)
    future: asyncio.Future[np.ndarray] = field(compare=False)
    enqueued: float = field(compare=False)
    deadline: float | None = field(default=None, compare=False)
    admission: Admission | None = field(default=None, compare=False)


class _Queue(asyncio.PriorityQueue[_Item]):
    """A priority queue from which a caller that gave up can take its item back."""

    def discard(self, item: _Item) -> bool:
        """Remove `item` if it is still queued (no worker took it); True when removed."""
        try:
            self._queue.remove(item)  # type: ignore[attr-defined]
        except ValueError:
            return False
        heapq.heapify(self._queue)  # type: ignore[attr-defined]
        self.task_done()
        return True


class Batcher:
    """Batches single-image tensors for one model version onto its instances."""

    def __init__(
        self,
        runners: Sequence[RunBatch],
        max_batch_size: int = 8,
        max_delay_s: float = 0.002,
        max_queue_size: int = 256,
        preferred_batch_sizes: Sequence[int] = (),
        priority_levels: int = 1,
        default_priority_level: int = 1,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        name: str = "model",
    ) -> None:
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        if not 1 <= default_priority_level <= priority_levels:
            raise ValueError("default_priority_level must be within 1..priority_levels")
        self._runners = list(runners)
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_size = max_queue_size
        self.preferred_batch_sizes = frozenset(preferred_batch_sizes)
        self.priority_levels = priority_levels
        self.default_priority_level = default_priority_level
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._executor = ThreadPoolExecutor(
            max_workers=len(self._runners), thread_name_prefix=f"infer-{name}"
        )
        self._seq = itertools.count()
        self._queue: _Queue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._waiting = 0
        """Admitted images no worker has picked up yet."""
        self._seconds_per_image = 0.0
        """Moving average of inference time per image (for the retry hint)."""

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue else 0

    @property
    def instances(self) -> int:
        return len(self._runners)

    def start(self) -> None:
        self._queue = _Queue()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work(run)) for run in self._runners]

    def level_of(self, priority: int) -> int:
        """Priority 0 means the default level; 1 is the most urgent."""
        if priority < 0 or priority > self.priority_levels:
            raise ValueError(f"priority must be 0..{self.priority_levels}, got {priority}")
        return priority or self.default_priority_level

    @contextlib.contextmanager
    def admit(self, images: int) -> Iterator[Admission]:
        """Reserve room for a request's `images` until a worker picks each one up, or refuse
        the request at once with QueueFull, before any work (decoding) is spent on it.

        Waiting images (being decoded or queued) are bounded by `max_queue_size`; images
        already running on an instance no longer count."""
        if self._queue is None or self._closing:
            raise ModelNotReady("model is not accepting requests")
        if self._waiting + images > self.max_queue_size:
            raise QueueFull(
                f"model is at capacity ({self._waiting} of {self.max_queue_size} images "
                "waiting); retry later",
                retry_after_ms=self.retry_after_ms(),
            )
        admission = Admission(self, images)
        self._waiting += images
        try:
            yield admission
        finally:
            admission.release(admission.remaining)

    def retry_after_ms(self) -> int:
        """A hint for refused clients: the time the backlog ahead takes to clear."""
        per_image = self._seconds_per_image or 0.01
        return max(1, round(1000 * per_image * self._waiting / len(self._runners)))

    async def submit(
        self,
        tensor: np.ndarray,
        deadline: float | None = None,
        priority: int = 0,
        admission: Admission | None = None,
    ) -> np.ndarray:
        """Queue one image tensor; returns its output row. Raises QueueFull when full."""
        if self._queue is None or self._closing:
            raise ModelNotReady("model is not accepting requests")
        if self._queue.qsize() >= self.max_queue_size:
            raise QueueFull(
                f"queue is full ({self.max_queue_size} images waiting); retry later",
                retry_after_ms=self.retry_after_ms(),
            )
        loop = asyncio.get_running_loop()
        item = _Item(
            self.level_of(priority),
            next(self._seq),
            tensor,
            loop.create_future(),
            time.monotonic(),
            deadline,
            admission,
        )
        self._queue.put_nowait(item)
        self._report_depth()
        try:
            return await item.future
        except asyncio.CancelledError:
            # The caller gave up: free its queue slot now, not when a worker reaches it,
            # or the queue stays full of dead items while admission (released by the
            # caller) lets new requests in, to be decoded and then refused here.
            if self._queue.discard(item):
                self._report_depth()
            raise

    async def close(self) -> None:
        """Stop taking items, finish every queued one, then stop the workers."""
        self._closing = True
        if self._queue is not None:
            await self._queue.join()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._executor.shutdown(wait=True)

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
            if len(items) in self.preferred_batch_sizes:
                break
            remaining = until - time.monotonic()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        for item in items:
            if item.admission is not None:
                item.admission.release(1)
        self._report_depth()
        return items

    async def _work(self, run: RunBatch) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            try:
                await self._run(items, run, loop)
            except Exception:  # never let the worker die; _run already failed its waiters
                log.exception("batch worker error")
            finally:
                for _ in items:
                    self._queue.task_done()

    async def _run(
        self, items: list[_Item], run: RunBatch, loop: asyncio.AbstractEventLoop
    ) -> None:
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
            assembled = time.monotonic()
            out = await loop.run_in_executor(self._executor, run, batch)
            if len(out) != len(live):
                raise RuntimeError(f"model returned {len(out)} rows for a batch of {len(live)}")
        except Exception as exc:
            log.error("inference failed on a batch of %d: %r", len(live), exc, exc_info=exc)
            for item in live:
                if not item.future.done():
                    item.future.set_exception(InferenceFailed("inference failed"))
            return
        finished = time.monotonic()
        per_image = (finished - assembled) / len(live)
        self._seconds_per_image = 0.9 * self._seconds_per_image + 0.1 * per_image
        for item, row in zip(live, out, strict=True):
            if not item.future.done():
                item.future.set_result(row)
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    size=len(live),
                    queue_seconds=[started - item.enqueued for item in live],
                    input_seconds=assembled - started,
                    inference_seconds=finished - assembled,
                    expired=expired,
                )
            )
