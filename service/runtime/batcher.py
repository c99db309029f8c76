"""Dynamic batching: a bounded priority queue per model version, batches formed by size or delay.

Producers never block: when the queue holds `max_queue_size` items, `submit` raises QueueFull
at once. A request with a deadline is refused the same way when the work ahead of it (the
images waiting, shared by the instances, at the measured service time per image) would not
leave it done in time: under overload the queue then holds only work that can still meet its
deadline, instead of work whose callers give up before it runs. One worker thread per model
instance takes the most urgent item (lowest priority level first, then arrival order), waits
at most `max_delay_s` for more (up to `max_batch_size` live items, or until a preferred batch
size is reached and nothing else is waiting), drops items whose caller gave up or whose
deadline passed before any work (decoding) is spent on them, runs the batch on its instance,
and hands the result (or the failure) back to the event loop for every waiter of that batch.

The workers are plain threads, not event-loop tasks: a worker that finishes a batch takes
the next one at once, whatever the event loop is busy with, so an instance never idles
waiting for the loop (ONNX Runtime releases the GIL while it runs). The loop hears from a
worker once per batch (`call_soon_threadsafe`).

An item's input may be deferred: a function that makes it (decoding an image), called by
the worker that runs the item's batch, on the core that then runs it, before the batch's
cores are claimed. A deferred input that raises fails that item alone; the rest of the batch
runs. On CPU this keeps exactly one busy thread per core, as in the limit the server is
measured against, and the decoded image in the cache of the core that infers it
(docs/performance.md has the measurements).

An optional *solo* runner (an instance whose intra-op threads span every core) takes a batch
that is all the work there is: nothing else queued or admitted (being decoded) for the model,
and no batch of any model running or image being decoded in the process (`Cores`, shared by
every CPU model). While it runs, every other worker holds its batch until it is done, so the
cores are never oversubscribed. On CPU this gives a lone request the latency of all cores and
concurrent requests the throughput of one single-threaded instance per core.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from imgclf.errors import DeadlineExceeded, InferenceFailed, ModelNotReady, QueueFull
from imgclf.runtime.cores import Cores
from imgclf.runtime.osthreads import name_this_thread

log = logging.getLogger(__name__)

RunBatch = Callable[[np.ndarray], np.ndarray]
Input = np.ndarray | Callable[[], np.ndarray]
"""An item's input tensor, or a function the worker calls to make it (see the module doc)."""


@dataclass
class BatchStats:
    """What one batch observed; handed to the `on_batch` hook (metrics, statistics) on the
    event loop."""

    size: int
    queue_seconds: list[float]
    input_seconds: float
    """Assembling the batch tensor."""
    inference_seconds: float
    """The engine run."""
    expired: int
    """Items dropped because their deadline passed in the queue."""
    solo: bool = False
    """Whether the batch ran on the solo runner."""
    prepare_seconds: list[float] = field(default_factory=list)
    """Making each deferred input of the batch (decoding), failed ones included."""


class Admission:
    """A request's reservation of room in a batcher (see Batcher.admit)."""

    def __init__(self, batcher: Batcher, images: int) -> None:
        self._batcher = batcher
        self.remaining = images

    def release(self, images: int) -> None:
        with self._batcher._lock:
            self._release(images)

    def _release(self, images: int) -> None:
        """`release` for a caller that holds the batcher's lock."""
        images = min(images, self.remaining)
        self.remaining -= images
        self._batcher._waiting -= images


@dataclass(order=True)
class _Item:
    level: int
    seq: int
    tensor: Input = field(compare=False)
    future: asyncio.Future[np.ndarray] = field(compare=False)
    enqueued: float = field(compare=False)
    deadline: float | None = field(default=None, compare=False)
    admission: Admission | None = field(default=None, compare=False)


def _dead(item: _Item, now: float, seconds: float = 0.0) -> bool:
    """Whether the item's caller gave up, or its deadline passes before `seconds` more
    (no work to spend on it)."""
    return item.future.done() or (item.deadline is not None and now + seconds >= item.deadline)


@dataclass
class _Batch:
    """A batch a worker took, sorted out (see Batcher._prepare)."""

    taken: float
    live: list[_Item] = field(default_factory=list)
    expired: list[_Item] = field(default_factory=list)
    failed: list[tuple[_Item, Exception]] = field(default_factory=list)
    """Items whose deferred input raised, with what it raised."""
    prepare_seconds: list[float] = field(default_factory=list)


@dataclass
class _Answer:
    """What the event loop answers a batch's waiters with (`out` None: the run failed)."""

    live: list[_Item]
    out: np.ndarray | None
    expired: list[_Item]
    failed: list[tuple[_Item, Exception]]
    stats: BatchStats | None


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
        solo: RunBatch | None = None,
        cores: Cores | None = None,
    ) -> None:
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        if not 1 <= default_priority_level <= priority_levels:
            raise ValueError("default_priority_level must be within 1..priority_levels")
        self._runners = list(runners)
        self._solo = solo
        self._cores = cores if cores is not None else Cores()
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_size = max_queue_size
        self.preferred_batch_sizes = frozenset(preferred_batch_sizes)
        self.priority_levels = priority_levels
        self.default_priority_level = default_priority_level
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._name = name
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        # Everything below is guarded by _lock. `_arrived` wakes workers waiting for items.
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._heap: list[_Item] = []
        self._closing = False
        self._waiting = 0
        """Admitted images no worker has picked up yet."""
        self._holding = 0
        """Workers holding a batch (collecting it, waiting to run it, or running it)."""
        self._running = 0
        """Live images in the batches the workers hold."""
        self._seconds_per_image = 0.0
        """Moving average of the service time per image: making its input (decoding) and
        its share of the batch's inference (for admission by deadline and the retry hint)."""

    @property
    def depth(self) -> int:
        return len(self._heap)

    @property
    def instances(self) -> int:
        return len(self._runners)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._threads = [
            threading.Thread(
                target=self._work, args=(run,), name=f"infer-{self._name}_{i}", daemon=True
            )
            for i, run in enumerate(self._runners)
        ]
        for thread in self._threads:
            thread.start()

    def level_of(self, priority: int) -> int:
        """Priority 0 means the default level; 1 is the most urgent."""
        if priority < 0 or priority > self.priority_levels:
            raise ValueError(f"priority must be 0..{self.priority_levels}, got {priority}")
        return priority or self.default_priority_level

    @contextlib.contextmanager
    def admit(self, images: int, deadline: float | None = None) -> Iterator[Admission]:
        """Reserve room for a request's `images` until a worker picks each one up, or refuse
        the request at once with QueueFull, before any work (decoding) is spent on it.

        Waiting images (being decoded or queued) are bounded by `max_queue_size`; images
        already running on an instance no longer count. A request whose `deadline` (a
        time.monotonic() instant) would pass before the work ahead of it and its own is done
        is refused too."""
        if self._loop is None or self._closing:
            raise ModelNotReady("model is not accepting requests")
        with self._lock:
            if self._waiting + images > self.max_queue_size:
                raise QueueFull(
                    f"model is at capacity ({self._waiting} of {self.max_queue_size} images "
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
            self._waiting += images
        try:
            yield admission
        finally:
            admission.release(admission.remaining)

    def retry_after_ms(self) -> int:
        """A hint for refused clients: the time the backlog ahead takes to clear."""
        per_image = self._seconds_per_image or 0.01
        return max(1, round(1000 * per_image * self._waiting / len(self._runners)))

    def _seconds_for(self, images: int) -> float:
        """Expected time until `images` more would be done: the images ahead (waiting, and
        in the batches the workers hold) and these, shared by the instances, at the measured
        service time (0 until measured)."""
        ahead = self._waiting + self._running
        return self._seconds_per_image * (ahead + images) / len(self._runners)

    async def submit(
        self,
        tensor: Input,
        deadline: float | None = None,
        priority: int = 0,
        admission: Admission | None = None,
    ) -> np.ndarray:
        """Queue one image tensor (or a function making it, called by the worker that runs
        it); returns its output row. Raises QueueFull when full, or what making it raised."""
        loop = self._loop
        if loop is None or self._closing:
            raise ModelNotReady("model is not accepting requests")
        item = _Item(
            self.level_of(priority),
            next(self._seq),
            tensor,
            loop.create_future(),
            time.monotonic(),
            deadline,
            admission,
        )
        with self._lock:
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
            with self._lock, contextlib.suppress(ValueError):
                self._heap.remove(item)
                heapq.heapify(self._heap)
                self._report_depth()
            raise

    async def close(self) -> None:
        """Stop taking items, finish every queued one, then stop the workers."""
        with self._lock:
            self._closing = True
            self._arrived.notify_all()
        threads, self._threads = self._threads, []
        if threads:
            # Joined off the loop: the workers hand their last results to it meanwhile.
            await asyncio.to_thread(lambda: [t.join() for t in threads])

    def _report_depth(self) -> None:
        """Caller holds the lock, so reports land in the order the depth changed."""
        if self._on_depth is not None:
            self._on_depth(len(self._heap))

    # --- worker threads ---------------------------------------------------------------------

    def _take(self) -> tuple[list[_Item], int] | None:
        """Wait for a batch; returns its items and how many are live, or None once closing
        and nothing is left. The caller then owns one `_holding` count and the live items'
        `_running` count."""
        with self._lock:
            while not self._heap:
                if self._closing:
                    return None
                self._arrived.wait()
            items = [heapq.heappop(self._heap)]
            self._holding += 1
            now = time.monotonic()
            until = now + self.max_delay_s
            # An item that would miss its deadline even if it ran alone now is dead too.
            alone = self._seconds_per_image
            live = 0 if _dead(items[0], now, alone) else 1
            # Dead items (caller gone, deadline passed) ride along to be answered, but take
            # no place in the batch.
            while live < self.max_batch_size:
                if self._heap:
                    item = heapq.heappop(self._heap)
                    items.append(item)
                    live += not _dead(item, now, alone)
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

    def _claim_cores(self) -> RunBatch | None:
        """Take every core for a solo run when this batch is all the work there is (returns
        the solo runner), or one core (returns None; waits while a solo run holds them)."""
        with self._lock:
            alone = self._holding == 1 and not self._heap and self._waiting == 0
        if self._solo is not None and alone and self._cores.try_solo():
            return self._solo
        self._cores.begin_batch()
        return None

    def _work(self, run: RunBatch) -> None:
        name_this_thread(threading.current_thread().name)
        while (taken := self._take()) is not None:
            items, live = taken
            answer = None
            claimed = False
            solo_run = None
            try:
                batch = self._prepare(items)
                if batch.live:
                    solo_run = self._claim_cores()
                    claimed = True
                answer = self._run(batch, solo_run or run, solo_run is not None)
            except Exception:  # never let the worker die
                log.exception("batch worker error")
            finally:
                # Free the cores before answering, so that the next request (a client's
                # reply to this answer) finds them free.
                if solo_run is not None:
                    self._cores.end_solo()
                elif claimed:
                    self._cores.note(-1)
                with self._lock:
                    self._holding -= 1
                    self._running -= live
            if answer is None:  # the worker itself failed: fail every waiter of the batch
                answer = _Answer(items, None, [], [], None)
            self._hand_back(answer)

    def _prepare(self, items: list[_Item]) -> _Batch:
        """Drop the items whose caller gave up or whose deadline passed, then make the
        deferred inputs of the rest (counted as CPU work: no solo run meanwhile)."""
        taken = time.monotonic()
        batch = _Batch(taken)
        for item in items:
            if item.future.done():  # the caller gave up (cancelled)
                continue
            if _dead(item, taken, self._seconds_per_image):
                batch.expired.append(item)
                continue
            batch.live.append(item)
        deferred = [item for item in batch.live if callable(item.tensor)]
        if not deferred:
            return batch
        self._cores.note(+1)
        try:
            for item in deferred:
                started = time.monotonic()
                try:
                    item.tensor = item.tensor()
                except Exception as exc:
                    batch.failed.append((item, exc))
                batch.prepare_seconds.append(time.monotonic() - started)
        finally:
            self._cores.note(-1)
        if batch.failed:
            failed = {id(item) for item, _ in batch.failed}
            batch.live = [item for item in batch.live if id(item) not in failed]
        return batch

    def _run(self, batch: _Batch, run: RunBatch, solo: bool) -> _Answer:
        """Run one prepared batch; returns what `_deliver` answers its waiters with."""
        live = batch.live
        if not live:
            return _Answer([], None, batch.expired, batch.failed, None)
        started = time.monotonic()
        try:
            tensors = [item.tensor for item in live]
            batch_input = tensors[0][None] if len(live) == 1 else np.stack(tensors)
            assembled = time.monotonic()
            out = run(batch_input)
            if len(out) != len(live):
                raise RuntimeError(f"model returned {len(out)} rows for a batch of {len(live)}")
        except Exception as exc:
            log.error("inference failed on a batch of %d: %r", len(live), exc, exc_info=exc)
            return _Answer(live, None, batch.expired, batch.failed, None)
        finished = time.monotonic()
        service = (sum(batch.prepare_seconds) + finished - assembled) / len(live)
        self._seconds_per_image = (
            0.9 * self._seconds_per_image + 0.1 * service if self._seconds_per_image else service
        )
        stats = BatchStats(
            size=len(live),
            queue_seconds=[batch.taken - item.enqueued for item in live],
            input_seconds=assembled - started,
            inference_seconds=finished - assembled,
            expired=len(batch.expired),
            solo=solo,
            prepare_seconds=batch.prepare_seconds,
        )
        return _Answer(live, out, batch.expired, batch.failed, stats)

    def _hand_back(self, answer: _Answer) -> None:
        """`_deliver` the answer on the event loop."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver, answer)
        except RuntimeError:  # the loop is closed: nobody waits for these results any more
            log.warning("batch finished after its event loop closed; results dropped")

    def _deliver(self, answer: _Answer) -> None:
        """On the event loop: answer every waiter of one batch (`out` None: it failed)."""
        for item in answer.expired:
            if not item.future.done():
                item.future.set_exception(
                    DeadlineExceeded(
                        "deadline passed (or would before it could be done) while queued"
                    )
                )
        for item, exc in answer.failed:
            if not item.future.done():
                item.future.set_exception(exc)
        if answer.out is None:
            for item in answer.live:
                if not item.future.done():
                    item.future.set_exception(InferenceFailed("inference failed"))
        else:
            for item, row in zip(answer.live, answer.out, strict=True):
                if not item.future.done():
                    item.future.set_result(row)
        if answer.stats is not None and self._on_batch is not None:
            self._on_batch(answer.stats)
