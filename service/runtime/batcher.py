"""Dynamic batching for one model version: its queue and its workers, put together.

- imgclf.runtime.batchqueue: the bounded priority queue (admission, priority levels,
  deadlines) and the batches it hands the workers (by size, delay, preferred sizes);
- imgclf.runtime.workers: one thread per instance (drop dead items, make deferred inputs,
  run, answer the waiters on the event loop);
- imgclf.runtime.cores: the cores a batch runs on (one, or every core for the model's solo
  session when the batch is all the work there is), behind `CoreGate`, the one interface the
  workers call.

The data plane sees only `Batcher`: `admit` a request, `submit` its images, `close` to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import numpy as np

from imgclf.runtime.batchqueue import Admission, BatchQueue, Input
from imgclf.runtime.cores import CoreGate, Cores
from imgclf.runtime.workers import BatchStats, RunBatch, Workers

__all__ = ["Admission", "BatchStats", "Batcher"]


class Batcher:
    """Batches single-image tensors for one model version onto its instances (`runners`);
    `solo` is a runner on every core, used when a batch is all the work there is in the
    process (`cores`, shared by every CPU model)."""

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
        self._queue = BatchQueue(
            len(runners), max_batch_size, max_delay_s, max_queue_size, preferred_batch_sizes,
            priority_levels, default_priority_level, on_depth,
        )  # fmt: skip
        self._workers = Workers(self._queue, runners, CoreGate(cores, solo), on_batch, name)

    @property
    def depth(self) -> int:
        return self._queue.depth

    @property
    def instances(self) -> int:
        return self._queue.instances

    @property
    def max_batch_size(self) -> int:
        return self._queue.max_batch_size

    @property
    def max_delay_s(self) -> float:
        return self._queue.max_delay_s

    @property
    def max_queue_size(self) -> int:
        return self._queue.max_queue_size

    @property
    def preferred_batch_sizes(self) -> frozenset[int]:
        return self._queue.preferred_batch_sizes

    @property
    def priority_levels(self) -> int:
        return self._queue.priority_levels

    @property
    def default_priority_level(self) -> int:
        return self._queue.default_priority_level

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._queue.open(loop)
        self._workers.start(loop)

    def level_of(self, priority: int) -> int:
        """Priority 0 means the default level; 1 is the most urgent."""
        return self._queue.level_of(priority)

    def admit(
        self, images: int, deadline: float | None = None
    ) -> contextlib.AbstractContextManager[Admission]:
        """See BatchQueue.admit: room for a request's images, or QueueFull at once."""
        return self._queue.admit(images, deadline)

    async def submit(
        self,
        tensor: Input,
        deadline: float | None = None,
        priority: int = 0,
        admission: Admission | None = None,
    ) -> np.ndarray:
        """Queue one image tensor (or a function making it, called by the worker that runs
        it); returns its output row. Raises QueueFull when full, or what making it raised."""
        return await self._queue.submit(tensor, deadline, priority, admission)

    async def close(self) -> None:
        """Stop taking items, finish every queued one, then stop the workers."""
        self._queue.close()
        await self._workers.join()
