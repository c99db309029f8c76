"""Dynamic batching for one model version: its queue and its workers, put together.

- imgclf.runtime.batchqueue: the bounded priority queue (admission, priority levels,
  deadlines) and the batches it hands the workers (by size, delay, preferred sizes);
- imgclf.runtime.workers: one thread per instance (drop dead items, make deferred inputs,
  run, answer the waiters on the event loop);
- imgclf.runtime.cores: the cores a batch runs on (one, or every core for the model's solo
  session when the batch is all the work there is), behind `CoreGate`, the one interface the
  workers call.

The data plane sees only `Batcher` (the queue, started with its workers): `admit` a request,
`submit` its images, `close` to drain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from imgclf.runtime.batchqueue import Admission, BatchQueue
from imgclf.runtime.cores import CoreGate, Cores
from imgclf.runtime.workers import BatchStats, RunBatch, Workers

__all__ = ["Admission", "BatchStats", "Batcher"]


class Batcher(BatchQueue):
    """The queue of one model version with its workers: batches single-image tensors onto
    its instances (`runners`); `solo` is a runner on every core, used when a batch is all the
    work there is in the process (`cores`, shared by every CPU model)."""

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
        super().__init__(
            len(runners), max_batch_size, max_delay_s, max_queue_size, preferred_batch_sizes,
            priority_levels, default_priority_level, on_depth,
        )  # fmt: skip
        self._workers = Workers(self, runners, CoreGate(cores, solo), on_batch, name)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.open(loop)
        self._workers.start(loop)

    async def close(self) -> None:
        """Stop taking items, finish every queued one, then stop the workers."""
        self.stop_taking()
        await self._workers.join()
