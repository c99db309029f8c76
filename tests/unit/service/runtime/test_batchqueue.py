"""imgclf.runtime.batchqueue: what the queue hands a worker and the bookkeeping admission and
the solo decision read, without any worker thread (the batcher's tests drive it with them)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from imgclf.errors import QueueFull
from imgclf.runtime.batchqueue import BatchQueue


def row(value: float) -> np.ndarray:
    return np.full((2,), value, dtype=np.float32)


async def queued(queue: BatchQueue, *items: tuple[float, float | None, int]) -> list:
    """Submit (value, deadline, priority) items without waiting for answers."""
    queue.open(asyncio.get_running_loop())
    tasks = [asyncio.ensure_future(queue.submit(row(v), d, p)) for v, d, p in items]
    await asyncio.sleep(0)  # let every submit reach the heap
    return tasks


def test_take_hands_out_the_most_urgent_first_and_dead_items_ride_along() -> None:
    async def main() -> None:
        queue = BatchQueue(1, max_batch_size=2, max_delay_s=0.0, priority_levels=2)
        past = time.monotonic() - 1.0
        tasks = await queued(queue, (1.0, None, 2), (2.0, past, 1), (3.0, None, 1))
        taken = queue.take()
        assert taken is not None
        items, live = taken
        # Level 1 first in arrival order (the expired one too), then level 2.
        assert [float(i.tensor[0]) for i in items] == [2.0, 3.0, 1.0]
        assert live == 2  # the expired item takes no place in the batch
        assert queue.depth == 0 and queue.alone()
        queue.done(live)
        for t in tasks:
            t.cancel()

    asyncio.run(main())


def test_alone_means_one_held_batch_and_nothing_else() -> None:
    async def main() -> None:
        queue = BatchQueue(2, max_batch_size=1, max_delay_s=0.0)
        tasks = await queued(queue, (1.0, None, 0), (2.0, None, 0))
        first = queue.take()
        assert first is not None
        assert not queue.alone()  # the second item still waits
        second = queue.take()
        assert second is not None
        assert not queue.alone()  # two batches held
        queue.done(second[1])
        assert queue.alone()
        with queue.admit(1):
            assert not queue.alone()  # an admitted request is work on its way
        queue.done(first[1])
        for t in tasks:
            t.cancel()

    asyncio.run(main())


def test_stop_taking_lets_take_end_once_empty() -> None:
    async def main() -> None:
        queue = BatchQueue(1, max_batch_size=4, max_delay_s=0.0)
        tasks = await queued(queue, (1.0, None, 0))
        queue.stop_taking()
        taken = queue.take()
        assert taken is not None and taken[1] == 1  # the queued item is still handed out
        queue.done(taken[1])
        assert queue.take() is None
        for t in tasks:
            t.cancel()

    asyncio.run(main())


def test_the_service_time_average_drives_admission_by_deadline() -> None:
    async def main() -> None:
        queue = BatchQueue(1, max_batch_size=1)
        queue.open(asyncio.get_running_loop())
        queue.record_service(1.0)
        assert queue.seconds_per_image == 1.0  # the first measure is taken as it is
        queue.record_service(2.0)
        assert queue.seconds_per_image == pytest.approx(1.1)
        with pytest.raises(QueueFull, match="before the deadline"):
            queue.admit(1, deadline=time.monotonic() + 0.5).__enter__()
        with queue.admit(1, deadline=time.monotonic() + 5.0) as admission:
            assert admission.remaining == 1 and queue.waiting == 1
        assert queue.waiting == 0

    asyncio.run(main())
