"""The workers of one model version: one thread per instance takes a batch from the queue
(imgclf.runtime.batchqueue), drops the items whose caller gave up or whose deadline passed
before any work (decoding) is spent on them, makes the deferred inputs of the rest, runs the
batch on the cores the model's gate gives it (imgclf.runtime.cores.CoreGate), and hands the
result (or the failure) back to the event loop for every waiter of that batch.

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
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from imgclf.errors import DeadlineExceeded, InferenceFailed
from imgclf.runtime.batchqueue import BatchQueue, Item
from imgclf.runtime.cores import CoreGate
from imgclf.runtime.osthreads import name_this_thread

log = logging.getLogger(__name__)


class RunBatch(Protocol):
    """Runs a batch: its output rows. Called with `features=True` (only when an item of the
    batch asks for them; a plain batch is called with the batch alone), a pair (output rows,
    the feature tensor's rows)."""

    def __call__(self, batch: np.ndarray, /, features: bool = False) -> Any: ...


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


@dataclass
class _Batch:
    """A batch a worker took, sorted out (see Workers._prepare)."""

    taken: float
    live: list[Item] = field(default_factory=list)
    expired: list[Item] = field(default_factory=list)
    failed: list[tuple[Item, Exception]] = field(default_factory=list)
    """Items whose deferred input raised, with what it raised."""
    prepare_seconds: list[float] = field(default_factory=list)


@dataclass
class _Answer:
    """What the event loop answers a batch's waiters with (`out` None: the run failed)."""

    live: list[Item]
    out: np.ndarray | None
    expired: list[Item]
    failed: list[tuple[Item, Exception]]
    stats: BatchStats | None
    features: np.ndarray | None = None
    """The feature tensor's rows, when an item of the batch asked for them."""


class Workers:
    """One thread per instance, feeding `queue`'s batches to its runner."""

    def __init__(
        self,
        queue: BatchQueue,
        runners: Sequence[RunBatch],
        gate: CoreGate[RunBatch],
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "model",
    ) -> None:
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        self._queue = queue
        self._runners = list(runners)
        self._gate = gate
        self._on_batch = on_batch
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._threads = [
            threading.Thread(
                target=self._work, args=(run,), name=f"infer-{self._name}_{i}", daemon=True
            )
            for i, run in enumerate(self._runners)
        ]
        for thread in self._threads:
            thread.start()

    async def join(self) -> None:
        """Wait for every worker to end (the queue closed and empty)."""
        threads, self._threads = self._threads, []
        if threads:
            # Joined off the loop: the workers hand their last results to it meanwhile.
            await asyncio.to_thread(lambda: [t.join() for t in threads])

    def _work(self, run: RunBatch) -> None:
        name_this_thread(threading.current_thread().name)
        while (taken := self._queue.take()) is not None:
            items, live = taken
            answer = None
            try:
                batch = self._prepare(items)
                if batch.live:
                    # The cores are freed on leaving, before answering, so that the next
                    # request (a client's reply to this answer) finds them free.
                    with self._gate.running(run, self._queue.alone) as lease:
                        answer = self._run(batch, lease.run, lease.solo)
                else:
                    answer = self._run(batch, run, False)
            except Exception:  # never let the worker die
                log.exception("batch worker error")
            finally:
                self._queue.done(live)
            if answer is None:  # the worker itself failed: fail every waiter of the batch
                answer = _Answer(items, None, [], [], None)
            self._hand_back(answer)

    def _prepare(self, items: list[Item]) -> _Batch:
        """Drop the items whose caller gave up or whose deadline passed, then make the
        deferred inputs of the rest (counted as CPU work: no solo run meanwhile)."""
        taken = time.monotonic()
        batch = _Batch(taken)
        for item in items:
            if item.future.done():  # the caller gave up (cancelled)
                continue
            if item.dead(taken, self._queue.seconds_per_image):
                batch.expired.append(item)
                continue
            batch.live.append(item)
        deferred = [item for item in batch.live if callable(item.tensor)]
        if not deferred:
            return batch
        with self._gate.making_inputs():
            for item in deferred:
                started = time.monotonic()
                try:
                    item.tensor = item.tensor()
                except Exception as exc:
                    batch.failed.append((item, exc))
                batch.prepare_seconds.append(time.monotonic() - started)
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
            features = None
            if any(item.features is not None for item in live):
                out, features = run(batch_input, features=True)
            else:
                out = run(batch_input)
            if len(out) != len(live):
                raise RuntimeError(f"model returned {len(out)} rows for a batch of {len(live)}")
        except Exception as exc:
            log.error("inference failed on a batch of %d: %r", len(live), exc, exc_info=exc)
            return _Answer(live, None, batch.expired, batch.failed, None)
        finished = time.monotonic()
        self._queue.record_service((sum(batch.prepare_seconds) + finished - assembled) / len(live))
        stats = BatchStats(
            size=len(live),
            queue_seconds=[batch.taken - item.enqueued for item in live],
            input_seconds=assembled - started,
            inference_seconds=finished - assembled,
            expired=len(batch.expired),
            solo=solo,
            prepare_seconds=batch.prepare_seconds,
        )
        return _Answer(live, out, batch.expired, batch.failed, stats, features)

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
            for i, (item, row) in enumerate(zip(answer.live, answer.out, strict=True)):
                if not item.future.done():
                    if item.features is not None and answer.features is not None:
                        item.features(answer.features[i])
                    item.future.set_result(row)
        if answer.stats is not None and self._on_batch is not None:
            self._on_batch(answer.stats)
