"""The queue of one model version: admission, priorities, deadlines, and the batches it hands
its workers (imgclf.runtime.workers).

Producers never block: when the queue holds `max_queue_size` items, `submit` raises QueueFull
at once. A request with a deadline is refused the same way when the work ahead of it (the
images waiting, shared by the instances, at the measured service time per image) would not
leave it done in time: under overload the queue then holds only work that can still meet its
deadline, instead of work whose callers give up before it runs.

A worker `take`s the most urgent item (lowest priority level first, then arrival order) and
waits at most `max_delay_s` for more (up to `max_batch_size` live items, or until a preferred
batch size is reached and nothing else is waiting). Items whose caller gave up or whose
deadline passed ride along to be answered but take no place in the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from imgclf.errors import DeadlineExceeded, ModelNotReady, QueueFull

Input = np.ndarray | Callable[[], np.ndarray]
"""An item's input tensor, or a function the worker calls to make it (decoding an image)."""

TakeFeatures = Callable[[np.ndarray], None]
"""Called on the event loop with an item's row of the model's feature tensor (C, h, w),
before its output row is delivered: its batch runs with the feature output."""


class Admission:
    """A request's reservation of room in a queue (see BatchQueue.admit)."""

    def __init__(self, queue: BatchQueue, images: int) -> None:
        self._queue = queue
        self.remaining = images

    def release(self, images: int) -> None:
        with self._queue.lock:
            self._release(images)

    def _release(self, images: int) -> None:
        """`release` for a caller that holds the queue's lock."""
        images = min(images, self.remaining)
        self.remaining -= images
        self._queue.waiting -= images


@dataclass(order=True)
class Item:
    level: int
    seq: int
    tensor: Input = field(compare=False)
    future: asyncio.Future[np.ndarray] = field(compare=False)
    enqueued: float = field(compare=False)
    deadline: float | None = field(default=None, compare=False)
    admission: Admission | None = field(default=None, compare=False)
    features: TakeFeatures | None = field(default=None, compare=False)

    def dead(self, now: float, seconds: float = 0.0) -> bool:
        """Whether the caller gave up, or the deadline passes before `seconds` more (no work
        to spend on it)."""
        return self.future.done() or (self.deadline is not None and now + seconds >= self.deadline)


class BatchQueue:
    """The bounded priority queue of one model version, shared by its workers."""

    def __init__(
        self,
        instances: int,
        max_batch_size: int = 8,
        max_delay_s: float = 0.002,
        max_queue_size: int = 256,
        preferred_batch_sizes: Sequence[int] = (),
        priority_levels: int = 1,
        default_priority_level: int = 1,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        if not 1 <= default_priority_level <= priority_levels:
            raise ValueError("default_priority_level must be within 1..priority_levels")
        self.instances = instances
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_size = max_queue_size
        self.preferred_batch_sizes = frozenset(preferred_batch_sizes)
        self.priority_levels = priority_levels
        self.default_priority_level = default_priority_level
        self._on_depth = on_depth
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Everything below is guarded by `lock`. `_arrived` wakes workers waiting for items.
        self.lock = threading.Lock()
        self._arrived = threading.Condition(self.lock)
        self._heap: list[Item] = []
        self.closing = False
        self.waiting = 0
        """Admitted images no worker has picked up yet."""
        self._holding = 0
        """Workers holding a batch (collecting it, waiting to run it, or running it)."""
        self._running = 0
        """Live images in the batches the workers hold."""
        self.seconds_per_image = 0.0
        """Moving average of the service time per image: making its input (decoding) and
        its share of the batch's inference (for admission by deadline and the retry hint)."""

    @property
    def depth(self) -> int:
        return len(self._heap)

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Accept items; their futures belong to `loop`."""
        self._loop = loop

    def level_of(self, priority: int) -> int:
        """Priority 0 means the default level; 1 is the most urgent."""
        if priority < 0 or priority > self.priority_levels:
            raise ValueError(f"priority must be 0..{self.priority_levels}, got {priority}")
        return priority or self.default_priority_level

    # --- the producers' side ----------------------------------------------------------------

    @contextlib.contextmanager
    def admit(self, images: int, deadline: float | None = None) -> Iterator[Admission]:
        """Reserve room for a request's `images` until a worker picks each one up, or refuse
        the request at once with QueueFull, before any work (decoding) is spent on it.

        Waiting images (being decoded or queued) are bounded by `max_queue_size`; images
        already running on an instance no longer count. A request whose `deadline` (a
        time.monotonic() instant) would pass before the work ahead of it and its own is done
        is refused too."""
        if self._loop is None or self.closing:
            raise ModelNotReady("model is not accepting requests")
        with self.lock:
            if self.waiting + images > self.max_queue_size:
                raise QueueFull(
                    f"model is at capacity ({self.waiting} of {self.max_queue_size} images "
                    "waiting); retry later",
                    retry_after_ms=self.retry_after_ms(),
                )
            if deadline is not None:
                now = time.monotonic()
                if now >= deadline:
                    raise DeadlineExceeded("deadline passed before the request was admitted")
                needed = self._seconds_for(images)
                if now + needed > deadline:
                    raise QueueFull(
                        f"model cannot answer before the deadline (about {1000 * needed:.0f} "
                        "ms of work ahead); retry later",
                        retry_after_ms=self.retry_after_ms(),
                        reason="deadline_unmeetable",
                    )
            admission = Admission(self, images)
            self.waiting += images
        try:
            yield admission
        finally:
            admission.release(admission.remaining)

    def retry_after_ms(self) -> int:
        """A hint for refused clients: the time the backlog ahead takes to clear."""
        per_image = self.seconds_per_image or 0.01
        return max(1, round(1000 * per_image * self.waiting / self.instances))

    def _seconds_for(self, images: int) -> float:
        """Expected time until `images` more would be done: the images ahead (waiting, and
        in the batches the workers hold) and these, shared by the instances, at the measured
        service time (0 until measured)."""
        ahead = self.waiting + self._running
        return self.seconds_per_image * (ahead + images) / self.instances

    async def submit(
        self,
        tensor: Input,
        deadline: float | None = None,
        priority: int = 0,
        admission: Admission | None = None,
        features: TakeFeatures | None = None,
    ) -> np.ndarray:
        """Queue one image tensor (or a function making it, called by the worker that runs
        it); returns its output row. Raises QueueFull when full, or what making it raised.
        With `features`, the batch it runs in also fetches the model's feature tensor and
        `features` gets this image's row of it first (a batch without such an item fetches
        the output alone)."""
        loop = self._loop
        if loop is None or self.closing:
            raise ModelNotReady("model is not accepting requests")
        item = Item(
            self.level_of(priority),
            next(self._seq),
            tensor,
            loop.create_future(),
            time.monotonic(),
            deadline,
            admission,
            features,
        )
        with self.lock:
            if len(self._heap) >= self.max_queue_size:
                raise QueueFull(
                    f"queue is full ({self.max_queue_size} images waiting); retry later",
                    retry_after_ms=self.retry_after_ms(),
                )
            heapq.heappush(self._heap, item)
            self._report_depth()
            self._arrived.notify()
        try:
            return await item.future
        except asyncio.CancelledError:
            # The caller gave up: free its queue slot now, not when a worker reaches it,
            # or the queue stays full of dead items while admission (released by the
            # caller) lets new requests in, to be decoded and then refused here.
            with self.lock, contextlib.suppress(ValueError):
                self._heap.remove(item)
                heapq.heapify(self._heap)
                self._report_depth()
            raise

    def stop_taking(self) -> None:
        """Take no more items; workers finish the queued ones, then `take` returns None."""
        with self.lock:
            self.closing = True
            self._arrived.notify_all()

    def _report_depth(self) -> None:
        """Caller holds the lock, so reports land in the order the depth changed."""
        if self._on_depth is not None:
            self._on_depth(len(self._heap))

    # --- the workers' side ------------------------------------------------------------------

    def take(self) -> tuple[list[Item], int] | None:
        """Wait for a batch; returns its items and how many are live, or None once closing
        and nothing is left. The caller then holds the batch until it calls `done`."""
        with self.lock:
            while not self._heap:
                if self.closing:
                    return None
                self._arrived.wait()
            items = [heapq.heappop(self._heap)]
            self._holding += 1
            now = time.monotonic()
            until = now + self.max_delay_s
            # An item that would miss its deadline even if it ran alone now is dead too.
            alone = self.seconds_per_image
            live = 0 if items[0].dead(now, alone) else 1
            # Dead items (caller gone, deadline passed) ride along to be answered, but take
            # no place in the batch.
            while live < self.max_batch_size:
                if self._heap:
                    item = heapq.heappop(self._heap)
                    items.append(item)
                    live += not item.dead(now, alone)
                    continue
                if not live or live in self.preferred_batch_sizes:
                    break
                remaining = until - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.wait(remaining)
            for item in items:
                if item.admission is not None:
                    item.admission._release(1)
            self._running += live
            self._report_depth()
        return items, live

    def alone(self) -> bool:
        """Whether the one batch a worker holds is all the work there is: no other batch
        held, nothing queued, nothing admitted (being decoded)."""
        with self.lock:
            return self._holding == 1 and not self._heap and self.waiting == 0

    def done(self, live: int) -> None:
        """A worker is through with the batch it took (`live` images)."""
        with self.lock:
            self._holding -= 1
            self._running -= live

    def record_service(self, seconds_per_image: float) -> None:
        """Fold a batch's measured service time per image into the moving average."""
        previous = self.seconds_per_image
        self.seconds_per_image = (
            0.9 * previous + 0.1 * seconds_per_image if previous else seconds_per_image
        )
