"""imgclf.runtime.batcher: the dynamic batcher, driven by fake run_batch callables (one per model
instance) in the batcher's own thread pool.

The fake returns each row's sum, so every caller can check it got its own row back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from imgclf.errors import (
    DeadlineExceeded,
    ImgclfError,
    InferenceFailed,
    ModelNotReady,
    QueueFull,
)
from imgclf.runtime.batcher import Batcher, BatchStats
from imgclf.runtime.cores import Cores
from tests.unit.service.support import HANG, let_run

PENDING = 1.0
"""Seconds after which a waiter still unanswered counts as left pending forever."""


class FakeModel:
    """A run_batch that records each batch, can be held on an Event, and can fail."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_next = False
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.batches.append(batch.copy())
        self.started.set()
        assert self.gate.wait(HANG), "test never released the gate"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("secret engine detail")
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True)

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]

    @property
    def sums(self) -> list[list[float]]:
        return [sorted(b.reshape(len(b), -1).sum(axis=1).tolist()) for b in self.batches]

    async def wait_started(self) -> None:
        started = await asyncio.get_running_loop().run_in_executor(None, self.started.wait, HANG)
        assert started, "run_batch was never called"


@pytest.fixture
def model() -> Iterator[FakeModel]:
    fake = FakeModel()
    yield fake
    fake.gate.set()  # never leave a worker thread blocked


def row(value: float) -> np.ndarray:
    """A tensor whose row sum is 2 * value."""
    return np.full((2,), value, dtype=np.float32)


def test_concurrent_submits_are_batched_and_answered_in_order(model):
    stats: list[BatchStats] = []

    async def main() -> list[np.ndarray]:
        b = Batcher([model], max_batch_size=8, max_delay_s=0.05, on_batch=stats.append)
        b.start()
        results = await asyncio.gather(*(b.submit(row(i)) for i in range(5)))
        await b.close()
        return results

    results = asyncio.run(main())

    assert [float(r[0]) for r in results] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert max(model.sizes) > 1
    assert sum(model.sizes) == 5
    assert [s.size for s in stats] == model.sizes
    assert all(s.expired == 0 for s in stats)
    assert all(len(s.queue_seconds) == s.size for s in stats)
    assert all(q >= 0 for s in stats for q in s.queue_seconds)
    assert all(s.inference_seconds >= 0 for s in stats)
    assert all(s.input_seconds >= 0 for s in stats)


def test_max_batch_size_respected(model):
    async def main() -> list[np.ndarray]:
        b = Batcher([model], max_batch_size=3, max_delay_s=0.05)
        b.start()
        results = await asyncio.gather(*(b.submit(row(i)) for i in range(8)))
        await b.close()
        return results

    results = asyncio.run(main())

    assert [float(r[0]) for r in results] == [2.0 * i for i in range(8)]
    assert sum(model.sizes) == 8
    assert max(model.sizes) == 3
    assert all(n <= 3 for n in model.sizes)


def test_queue_full_raised_at_once(model):
    depths: list[int] = []

    async def main() -> None:
        b = Batcher([model], max_batch_size=1, max_queue_size=2, on_depth=depths.append)
        b.start()
        model.gate.clear()
        first = asyncio.ensure_future(b.submit(row(1)))
        await model.wait_started()  # the worker holds item 1; the queue is empty again
        queued = [asyncio.ensure_future(b.submit(row(v))) for v in (2, 3)]
        await let_run()
        assert b.depth == 2

        # Refused at once: were it queued behind the held batch, wait_for would time out.
        with pytest.raises(QueueFull, match="queue is full"):
            await asyncio.wait_for(b.submit(row(4)), HANG)

        model.gate.set()
        got = await asyncio.wait_for(asyncio.gather(first, *queued), HANG)
        assert [float(r[0]) for r in got] == [2.0, 4.0, 6.0]
        await b.close()

    asyncio.run(main())
    assert model.sums == [[2.0], [4.0], [6.0]]  # the refused tensor never ran
    assert 2 in depths


def test_expired_deadline_not_run(model):
    stats: list[BatchStats] = []

    async def main() -> None:
        b = Batcher([model], on_batch=stats.append)
        b.start()
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(b.submit(row(1), deadline=time.monotonic() - 1.0), HANG)
        await b.close()

    asyncio.run(main())
    assert model.batches == []
    assert stats == []


def test_expired_item_dropped_from_a_live_batch(model):
    stats: list[BatchStats] = []

    async def main() -> list:
        b = Batcher([model], max_delay_s=0.05, on_batch=stats.append)
        b.start()
        results = await asyncio.gather(
            b.submit(row(1), deadline=time.monotonic() - 1.0),
            b.submit(row(2), deadline=time.monotonic() + 60.0),
            b.submit(row(3)),
            return_exceptions=True,
        )
        await b.close()
        return results

    expired, later, none = asyncio.run(main())
    assert isinstance(expired, DeadlineExceeded)
    assert float(later[0]) == 4.0
    assert float(none[0]) == 6.0
    assert model.sums == [[4.0, 6.0]]
    assert [(s.size, s.expired) for s in stats] == [(2, 1)]


def test_cancelled_caller_skipped(model):
    async def main() -> None:
        b = Batcher([model], max_batch_size=8, max_delay_s=0.01)
        b.start()
        model.gate.clear()
        first = asyncio.ensure_future(b.submit(row(1)))
        await model.wait_started()
        gone = asyncio.ensure_future(b.submit(row(2)))
        stays = asyncio.ensure_future(b.submit(row(3)))
        await let_run()
        gone.cancel()
        await let_run()
        model.gate.set()
        assert float((await asyncio.wait_for(first, HANG))[0]) == 2.0
        assert float((await asyncio.wait_for(stays, HANG))[0]) == 6.0
        with pytest.raises(asyncio.CancelledError):
            await gone
        await b.close()

    asyncio.run(main())
    assert model.sums == [[2.0], [6.0]]  # the cancelled caller's tensor (sum 4) never ran


def test_a_caller_that_gives_up_frees_its_queue_slot_at_once(model):
    """Admission is released when a caller gives up; its queued item must go too, or the
    queue stays full of dead items and the next admitted request (already decoded, in the
    server) is refused by the queue after all."""
    depths: list[int] = []

    async def main() -> None:
        b = Batcher([model], max_batch_size=1, max_queue_size=2, on_depth=depths.append)
        b.start()
        model.gate.clear()
        first = asyncio.ensure_future(b.submit(row(1)))
        await model.wait_started()  # the worker holds item 1 until the gate opens

        async def request(value: float) -> np.ndarray:
            with b.admit(1) as admission:
                return await b.submit(row(value), admission=admission)

        gone = [asyncio.ensure_future(request(v)) for v in (2, 3)]
        await let_run()
        assert b.depth == 2
        for task in gone:
            task.cancel()
        await let_run()
        assert b.depth == 0 and depths[-1] == 0
        again = [asyncio.ensure_future(request(v)) for v in (4, 5)]
        await let_run()
        assert b.depth == 2 and not any(t.done() for t in again)  # admitted and queued
        model.gate.set()
        got = await asyncio.wait_for(asyncio.gather(first, *again), HANG)
        assert [float(r[0]) for r in got] == [2.0, 8.0, 10.0]
        for task in gone:
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.wait_for(b.close(), HANG)  # the queue's task accounting still balances

    asyncio.run(main())
    assert model.sums == [[2.0], [8.0], [10.0]]  # the cancelled callers' tensors never ran


def test_failed_batch_fails_every_waiter_and_serving_goes_on(model):
    async def main() -> None:
        b = Batcher([model], max_batch_size=8, max_delay_s=0.05)
        b.start()
        model.fail_next = True
        failed = await asyncio.wait_for(
            asyncio.gather(b.submit(row(1)), b.submit(row(2)), return_exceptions=True), HANG
        )
        assert len(model.batches) == 1
        assert len(model.batches[0]) == 2  # both were in the failing batch
        for exc in failed:
            assert isinstance(exc, InferenceFailed)
            assert "secret" not in str(exc)
        after = await asyncio.wait_for(b.submit(row(5)), HANG)
        assert float(after[0]) == 10.0
        await b.close()

    asyncio.run(main())


def test_close_finishes_queued_items(model):
    async def main() -> None:
        b = Batcher([model], max_batch_size=1, max_delay_s=0.0)
        b.start()
        model.gate.clear()
        items = [asyncio.ensure_future(b.submit(row(1)))]
        await model.wait_started()
        items += [asyncio.ensure_future(b.submit(row(v))) for v in (2, 3)]
        await let_run()
        closing = asyncio.ensure_future(b.close())
        await let_run()
        assert not closing.done()  # waits for the held batch and the queue
        with pytest.raises(ModelNotReady):
            await b.submit(row(9))  # no new work while closing
        model.gate.set()
        await asyncio.wait_for(closing, HANG)
        assert all(t.done() for t in items)
        assert [float(t.result()[0]) for t in items] == [2.0, 4.0, 6.0]
        with pytest.raises(ModelNotReady):
            await b.submit(row(9))

    asyncio.run(main())
    assert model.sums == [[2.0], [4.0], [6.0]]


def test_submit_before_start_refused(model):
    async def main() -> None:
        b = Batcher([model])
        with pytest.raises(ModelNotReady):
            await b.submit(row(1))
        await b.close()  # closing a batcher that never started is harmless

    asyncio.run(main())


def test_wrong_row_count_fails_every_waiter_instead_of_hanging():
    """A run_batch that returns fewer rows than it was given (a broken model) must fail the
    batch; no waiter may be left pending forever."""

    def one_row(batch: np.ndarray) -> np.ndarray:
        return np.zeros((1, 1), dtype=np.float32)

    async def main() -> list:
        b = Batcher([one_row], max_batch_size=8, max_delay_s=0.05)
        b.start()
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(b.submit(row(i)) for i in range(3)), return_exceptions=True),
                PENDING,
            )
        finally:
            await b.close()

    try:
        outcomes = asyncio.run(main())
    except asyncio.TimeoutError:
        pytest.fail(f"waiters still pending after {PENDING}s: the batch was never failed")
    assert all(isinstance(o, InferenceFailed) for o in outcomes), outcomes


def test_unstackable_tensors_fail_instead_of_hanging(model):
    """Tensors of different shapes in one batch (possible for a model with dynamic H/W) must
    fail their waiters, not leave them pending forever; the batcher keeps serving."""

    async def main() -> tuple[list, np.ndarray]:
        b = Batcher([model], max_batch_size=8, max_delay_s=0.05)
        b.start()
        try:
            outcomes = await asyncio.wait_for(
                asyncio.gather(
                    b.submit(np.ones((3, 4, 4), np.float32)),
                    b.submit(np.ones((3, 5, 5), np.float32)),
                    return_exceptions=True,
                ),
                PENDING,
            )
            after = await asyncio.wait_for(b.submit(row(5)), HANG)
            return outcomes, after
        finally:
            await b.close()

    try:
        outcomes, after = asyncio.run(main())
    except asyncio.TimeoutError:
        pytest.fail(f"waiters still pending after {PENDING}s: the batch was never failed")
    assert all(isinstance(o, ImgclfError) for o in outcomes), outcomes
    assert float(after[0]) == 10.0


# --- construction and priority levels -------------------------------------------------------


def test_a_batcher_needs_a_runner():
    with pytest.raises(ValueError, match="at least one runner"):
        Batcher([])


@pytest.mark.parametrize(("levels", "default"), [(1, 2), (3, 0), (2, 3)])
def test_default_priority_level_out_of_range_rejected(model, levels, default):
    with pytest.raises(ValueError, match="default_priority_level"):
        Batcher([model], priority_levels=levels, default_priority_level=default)


def test_level_of(model):
    b = Batcher([model], priority_levels=3, default_priority_level=2)
    assert b.level_of(0) == 2  # 0: the default level
    assert [b.level_of(p) for p in (1, 2, 3)] == [1, 2, 3]
    for priority in (-1, 4, 100):
        with pytest.raises(ValueError, match=r"priority must be 0\.\.3"):
            b.level_of(priority)


def test_priority_out_of_range_refused_on_submit(model):
    async def main() -> None:
        b = Batcher([model], priority_levels=2, default_priority_level=1)
        b.start()
        with pytest.raises(ValueError, match="priority"):
            await asyncio.wait_for(b.submit(row(1), priority=3), HANG)
        assert b.depth == 0  # nothing was queued
        await b.close()

    asyncio.run(main())
    assert model.batches == []


def test_more_urgent_level_runs_first(model):
    """With the worker held, items queued at level 2 (explicitly and by default) then at
    level 1: once released, level 1 runs first, then level 2 in arrival order."""

    async def main() -> list[float]:
        b = Batcher(
            [model], max_batch_size=1, max_delay_s=0.0, priority_levels=2, default_priority_level=2
        )
        b.start()
        model.gate.clear()
        first = asyncio.ensure_future(b.submit(row(1), priority=2))
        await model.wait_started()  # the worker holds `first`
        low = asyncio.ensure_future(b.submit(row(2), priority=2))
        default = asyncio.ensure_future(b.submit(row(3)))  # priority 0 -> level 2
        await let_run()
        high = asyncio.ensure_future(b.submit(row(4), priority=1))
        await let_run()
        assert b.depth == 3
        model.gate.set()
        got = await asyncio.wait_for(asyncio.gather(first, low, default, high), HANG)
        await b.close()
        return [float(r[0]) for r in got]

    assert asyncio.run(main()) == [2.0, 4.0, 6.0, 8.0]  # everyone got their own row
    assert model.sums == [[2.0], [8.0], [4.0], [6.0]]  # held, level 1, then level 2 by arrival


# --- preferred batch sizes ------------------------------------------------------------------


def test_preferred_batch_size_dispatches_without_waiting_the_delay(model):
    """max_delay 5 s: three items (not a preferred size) stay waiting for more; the fourth
    reaches the preferred size 4 and the batch runs at once, long before the delay."""
    stats: list[BatchStats] = []

    async def main() -> None:
        b = Batcher(
            [model],
            max_batch_size=8,
            max_delay_s=5.0,
            preferred_batch_sizes=[4],
            on_batch=stats.append,
        )
        b.start()
        waiting = [asyncio.ensure_future(b.submit(row(i))) for i in range(3)]
        done, _ = await asyncio.wait(waiting, timeout=0.2)
        assert not done  # 3 is not preferred: the batcher waits for more
        assert model.batches == []
        last = asyncio.ensure_future(b.submit(row(3)))
        got = await asyncio.wait_for(asyncio.gather(*waiting, last), timeout=2)
        assert [float(r[0]) for r in got] == [0.0, 2.0, 4.0, 6.0]
        await b.close()

    asyncio.run(main())
    assert model.sizes == [4]
    assert [s.size for s in stats] == [4]


def test_preferred_size_does_not_cut_a_batch_while_more_wait(model):
    """Items already waiting join the batch (up to max_batch_size) even past a preferred
    size: a preferred size only ends the wait for items still to come."""

    async def main() -> None:
        b = Batcher([model], max_batch_size=6, max_delay_s=5.0, preferred_batch_sizes=[1, 2])
        b.start()
        model.gate.clear()
        first = asyncio.ensure_future(b.submit(row(0)))
        await model.wait_started()
        rest = [asyncio.ensure_future(b.submit(row(i))) for i in range(1, 7)]
        await let_run()
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), timeout=2)
        await b.close()

    asyncio.run(main())
    assert model.sizes == [1, 6]


# --- several instances ----------------------------------------------------------------------


def test_every_instance_gets_work_under_concurrent_load():
    """Two instances, each held inside its run: two concurrent items run at the same time,
    one on each instance (one instance alone could never start the second)."""
    a, b_ = FakeModel(), FakeModel()
    a.gate.clear()
    b_.gate.clear()

    async def main() -> list[float]:
        b = Batcher([a, b_], max_batch_size=1, max_delay_s=0.0)
        assert b.instances == 2
        b.start()
        items = [asyncio.ensure_future(b.submit(row(v))) for v in (1, 2)]
        await asyncio.wait_for(asyncio.gather(a.wait_started(), b_.wait_started()), HANG)
        a.gate.set()
        b_.gate.set()
        got = await asyncio.wait_for(asyncio.gather(*items), HANG)
        more = await asyncio.wait_for(
            asyncio.gather(*(b.submit(row(v)) for v in range(3, 9))), HANG
        )
        await b.close()
        return [float(r[0]) for r in (*got, *more)]

    try:
        assert asyncio.run(main()) == [2.0 * v for v in range(1, 9)]
    finally:
        a.gate.set()
        b_.gate.set()
    assert a.sizes[0] == 1
    assert b_.sizes[0] == 1
    assert sorted(a.sums[0] + b_.sums[0]) == [2.0, 4.0]
    assert sum(a.sizes) + sum(b_.sizes) == 8


def test_close_drains_every_instance():
    a, b_ = FakeModel(), FakeModel()
    a.gate.clear()
    b_.gate.clear()

    async def main() -> None:
        b = Batcher([a, b_], max_batch_size=1, max_delay_s=0.0)
        b.start()
        items = [asyncio.ensure_future(b.submit(row(v))) for v in (1, 2)]
        await asyncio.wait_for(asyncio.gather(a.wait_started(), b_.wait_started()), HANG)
        items += [asyncio.ensure_future(b.submit(row(v))) for v in (3, 4, 5)]
        await let_run()
        assert b.depth == 3
        closing = asyncio.ensure_future(b.close())
        await let_run()
        assert not closing.done()
        with pytest.raises(ModelNotReady):
            await b.submit(row(9))
        a.gate.set()
        b_.gate.set()
        await asyncio.wait_for(closing, HANG)
        assert [float(t.result()[0]) for t in items] == [2.0, 4.0, 6.0, 8.0, 10.0]

    try:
        asyncio.run(main())
    finally:
        a.gate.set()
        b_.gate.set()
    assert sorted(s for m in (a, b_) for batch in m.sums for s in batch) == [2, 4, 6, 8, 10]


# --- the solo runner ------------------------------------------------------------------------


def test_a_lone_item_runs_solo_and_reports_it(model):
    instance = FakeModel()
    stats: list[BatchStats] = []

    async def main() -> float:
        b = Batcher([instance], max_batch_size=1, max_delay_s=0.0, solo=model,
                    on_batch=stats.append)  # fmt: skip
        b.start()
        got = await asyncio.wait_for(b.submit(row(3)), HANG)
        await b.close()
        return float(got[0])

    assert asyncio.run(main()) == 6.0
    assert model.sums == [[6.0]]
    assert instance.batches == []
    assert [s.solo for s in stats] == [True]


def test_instances_wait_while_solo_runs_then_share_the_load(model):
    """The solo runner holds item 1 (on one worker's thread); items 2 and 3 arrive meanwhile:
    the other worker takes item 2 but starts it only once the solo run is over (no
    oversubscribed cores), on its instance. Item 3 runs on an instance, or solo if it finds
    item 2 already done (the fake runs in no time)."""
    a, b_ = FakeModel(), FakeModel()
    model.gate.clear()

    async def main() -> list[float]:
        b = Batcher([a, b_], max_batch_size=1, max_delay_s=0.0, solo=model)
        b.start()
        first = asyncio.ensure_future(b.submit(row(1)))
        await model.wait_started()
        rest = [asyncio.ensure_future(b.submit(row(v))) for v in (2, 3)]
        await asyncio.sleep(0.2)  # time enough for a worker to start a run, were it allowed
        assert a.batches == [] and b_.batches == []
        assert b.depth == 1  # item 2 taken by the free worker and held at the gate
        model.gate.set()
        got = await asyncio.wait_for(asyncio.gather(first, *rest), HANG)
        await b.close()
        return [float(r[0]) for r in got]

    try:
        assert asyncio.run(main()) == [2.0, 4.0, 6.0]
    finally:
        model.gate.set()
    assert model.sums[0] == [2.0]
    assert [4.0] in a.sums + b_.sums  # item 2 was taken while the solo run went on
    assert sorted(model.sums[1:] + a.sums + b_.sums) == [[4.0], [6.0]]


def test_no_solo_run_while_items_wait(model):
    """Items queued while the solo run holds the only worker run on the instance, except
    the last one, which finds nothing else to do and runs solo again."""
    instance = FakeModel()
    model.gate.clear()

    async def main() -> None:
        b = Batcher([instance], max_batch_size=1, max_delay_s=0.0, solo=model)
        b.start()
        first = asyncio.ensure_future(b.submit(row(0)))
        await model.wait_started()
        rest = [asyncio.ensure_future(b.submit(row(v))) for v in range(1, 5)]
        await let_run()
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), HANG)
        await b.close()

    try:
        asyncio.run(main())
    finally:
        model.gate.set()
    assert model.sums == [[0.0], [8.0]]
    assert instance.sums == [[2.0], [4.0], [6.0]]


def test_no_solo_run_while_a_request_is_being_decoded(model):
    """An admitted request still being decoded is work on its way (and on a core): a lone
    queued item then runs on its instance, not solo."""
    instances = [FakeModel(), FakeModel()]

    async def main() -> None:
        b = Batcher(instances, max_batch_size=1, max_delay_s=0.0, solo=model)
        b.start()
        with b.admit(1):  # a second request, admitted, its image not queued yet
            await asyncio.wait_for(b.submit(row(1)), HANG)
        await asyncio.wait_for(b.submit(row(2)), HANG)  # now truly alone
        await b.close()

    asyncio.run(main())
    assert instances[0].sums + instances[1].sums == [[2.0]]
    assert model.sums == [[4.0]]


def test_models_share_the_cores_no_solo_while_another_model_runs(model):
    """Two models' batchers on one Cores: while model A's batch runs, model B's lone item runs
    on B's instance, not solo; and while B's solo run holds the cores, A's next batch waits."""
    from imgclf.runtime.cores import Cores

    cores = Cores()
    a_instance, b_instance = FakeModel(), FakeModel()
    a_instance.gate.clear()

    async def main() -> None:
        a = Batcher([a_instance], max_batch_size=1, max_delay_s=0.0, cores=cores)
        b = Batcher([b_instance], max_batch_size=1, max_delay_s=0.0, solo=model, cores=cores)
        a.start()
        b.start()
        held = asyncio.ensure_future(a.submit(row(1)))
        await a_instance.wait_started()
        await asyncio.wait_for(b.submit(row(2)), HANG)  # A runs: B's lone item is not solo
        assert model.batches == [] and b_instance.sums == [[4.0]]
        a_instance.gate.set()
        await asyncio.wait_for(held, HANG)

        model.gate.clear()  # B alone now: solo, held
        solo = asyncio.ensure_future(b.submit(row(3)))
        await model.wait_started()
        a_next = asyncio.ensure_future(a.submit(row(4)))
        await asyncio.sleep(0.2)
        assert len(a_instance.batches) == 1  # A's next batch waits for the solo run
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(solo, a_next), HANG)
        assert a_instance.sums == [[2.0], [8.0]]
        await a.close()
        await b.close()

    try:
        asyncio.run(main())
    finally:
        a_instance.gate.set()
        model.gate.set()
    assert model.sums == [[6.0]]


# --- deferred inputs (made by the worker that runs them) --------------------------------------


def test_deferred_inputs_are_made_by_the_worker_that_runs_them(model):
    made_on: list[str] = []
    stats: list[BatchStats] = []

    def deferred(value: float):
        def make() -> np.ndarray:
            made_on.append(threading.current_thread().name)
            return row(value)

        return make

    async def main() -> list[float]:
        b = Batcher([model], max_batch_size=4, max_delay_s=0.05, name="m", on_batch=stats.append)
        b.start()
        got = await asyncio.wait_for(
            asyncio.gather(b.submit(deferred(1)), b.submit(row(2)), b.submit(deferred(3))), HANG
        )
        await b.close()
        return [float(g[0]) for g in got]

    assert asyncio.run(main()) == [2.0, 4.0, 6.0]
    assert made_on == ["infer-m_0", "infer-m_0"]  # the instance's worker, not the loop
    assert model.sums == [[2.0, 4.0, 6.0]]
    assert [len(s.prepare_seconds) for s in stats] == [2]
    assert all(seconds >= 0 for seconds in stats[0].prepare_seconds)


def test_a_deferred_input_that_raises_fails_its_item_alone(model):
    def corrupt() -> np.ndarray:
        raise ImgclfError("cannot decode image 0")

    async def main() -> tuple[object, ...]:
        b = Batcher([model], max_batch_size=4, max_delay_s=0.05)
        b.start()
        got = await asyncio.wait_for(
            asyncio.gather(b.submit(row(1)), b.submit(corrupt), b.submit(row(3)),
                           return_exceptions=True),
            HANG,
        )  # fmt: skip
        after = await asyncio.wait_for(b.submit(row(4)), HANG)  # and serving goes on
        await b.close()
        return (*got, after)

    first, failed, third, after = asyncio.run(main())
    assert float(first[0]) == 2.0 and float(third[0]) == 6.0 and float(after[0]) == 8.0
    assert isinstance(failed, ImgclfError)
    assert str(failed) == "cannot decode image 0"
    assert model.sums == [[2.0, 6.0], [8.0]]


def test_a_batch_whose_every_input_fails_runs_nothing(model):
    def corrupt() -> np.ndarray:
        raise ImgclfError("bad image")

    async def main() -> None:
        b = Batcher([model], max_batch_size=2, max_delay_s=0.0)
        b.start()
        with pytest.raises(ImgclfError, match="bad image"):
            await asyncio.wait_for(b.submit(corrupt), HANG)
        await b.close()

    asyncio.run(main())
    assert model.batches == []


def test_the_deferred_input_of_a_caller_that_gave_up_is_never_made(model):
    made: list[float] = []
    model.gate.clear()

    async def main() -> None:
        b = Batcher([model], max_batch_size=1, max_delay_s=0.0)
        b.start()
        first = asyncio.ensure_future(b.submit(row(1)))
        await model.wait_started()  # the only instance is busy with `first`
        second = asyncio.ensure_future(b.submit(lambda: made.append(2) or row(2)))
        await let_run()
        second.cancel()
        await let_run()
        model.gate.set()
        await asyncio.wait_for(first, HANG)
        await b.close()

    asyncio.run(main())
    assert made == []
    assert model.sums == [[2.0]]


def test_making_an_input_counts_as_work_on_the_cores(model):
    """While a worker decodes, the process's cores are at work: no other model's lone item
    may take them all for a solo run."""
    seen: list[int] = []
    cores = Cores()

    def decode() -> np.ndarray:
        seen.append(cores.working)
        return row(1)

    async def main() -> None:
        b = Batcher([model], max_batch_size=1, max_delay_s=0.0, cores=cores)
        b.start()
        await asyncio.wait_for(b.submit(decode), HANG)
        await b.close()

    asyncio.run(main())
    assert seen == [1]
    assert cores.working == 0


def test_a_lone_deferred_item_still_runs_solo(model):
    instance = FakeModel()

    async def main() -> float:
        b = Batcher([instance], max_batch_size=1, max_delay_s=0.0, solo=model)
        b.start()
        got = await asyncio.wait_for(b.submit(lambda: row(5)), HANG)
        await b.close()
        return float(got[0])

    assert asyncio.run(main()) == 10.0
    assert model.sums == [[10.0]]
    assert instance.batches == []


# --- deadlines: admission and dead items ------------------------------------------------------


def slow(seconds_per_image: float, model: FakeModel):
    """A run_batch taking `seconds_per_image` per row, then behaving as `model`."""

    def run(batch: np.ndarray) -> np.ndarray:
        time.sleep(seconds_per_image * len(batch))
        return model(batch)

    return run


def test_admission_refuses_a_deadline_the_work_ahead_cannot_meet(model):
    """Measured ~50 ms per image on one instance, four images ahead: a request with 100 ms
    left is refused at once (RESOURCE_EXHAUSTED, saying to retry), one with a minute left is
    admitted; a request whose deadline already passed is DEADLINE_EXCEEDED."""

    async def main() -> None:
        b = Batcher([slow(0.05, model)], max_batch_size=1, max_delay_s=0.0)
        b.start()
        await asyncio.wait_for(b.submit(row(1)), HANG)  # measures the service time
        model.gate.clear()
        model.started.clear()
        ahead = [asyncio.ensure_future(b.submit(row(v))) for v in (2, 3, 4, 5)]
        await model.wait_started()
        await let_run()

        async def request(value: float, seconds_left: float) -> np.ndarray:
            deadline = time.monotonic() + seconds_left
            with b.admit(1, deadline) as admission:
                return await b.submit(row(value), deadline, admission=admission)

        started = time.monotonic()
        with pytest.raises(QueueFull, match=r"before the deadline.*retry later") as refused:
            await request(6, 0.1)
        assert time.monotonic() - started < 0.05  # at once, not after waiting
        assert refused.value.reason == "deadline_unmeetable"
        assert refused.value.retry_after_ms and refused.value.retry_after_ms > 0
        with pytest.raises(DeadlineExceeded):
            await request(7, -0.01)
        admitted = asyncio.ensure_future(request(8, 60.0))
        await let_run()
        assert not admitted.done()
        model.gate.set()
        got = await asyncio.wait_for(asyncio.gather(*ahead, admitted), HANG)
        assert [float(r[0]) for r in got] == [4.0, 6.0, 8.0, 10.0, 16.0]
        await b.close()

    asyncio.run(main())
    assert 12.0 not in [s for sums in model.sums for s in sums]  # the refused one never ran


def test_without_a_deadline_or_before_any_measurement_admission_only_bounds_the_queue(model):
    async def main() -> None:
        b = Batcher([model], max_batch_size=1, max_delay_s=0.0)
        b.start()
        with b.admit(1, time.monotonic() + 0.001):  # no service time measured yet: admitted
            pass
        await asyncio.wait_for(b.submit(row(1)), HANG)
        with b.admit(200):  # no deadline: only the queue bound (256) counts
            pass
        await b.close()

    asyncio.run(main())


def test_dead_items_take_no_place_in_a_batch(model):
    """Items whose caller gave up or whose deadline passed while queued are answered and
    dropped before any work, and the batch fills with live items instead."""
    made: list[float] = []
    stats: list[BatchStats] = []

    def making(value: float):
        return lambda: made.append(value) or row(value)

    async def main() -> list:
        b = Batcher([model], max_batch_size=2, max_delay_s=0.0, on_batch=stats.append)
        b.start()
        model.gate.clear()
        first = asyncio.ensure_future(b.submit(row(1)))
        await model.wait_started()  # the only instance is busy: the rest queue up
        soon = time.monotonic() + 0.05
        queued = [
            asyncio.ensure_future(b.submit(making(2), deadline=soon)),
            asyncio.ensure_future(b.submit(making(3), deadline=soon)),
            asyncio.ensure_future(b.submit(making(4))),
            asyncio.ensure_future(b.submit(making(5), deadline=time.monotonic() + 60)),
        ]
        await let_run()
        await asyncio.sleep(0.1)  # the first two expire in the queue
        model.gate.set()
        results = await asyncio.wait_for(
            asyncio.gather(first, *queued, return_exceptions=True), HANG
        )
        await b.close()
        return results

    results = asyncio.run(main())
    assert [type(r).__name__ for r in results[1:3]] == ["DeadlineExceeded"] * 2
    assert [float(r[0]) for r in results[3:]] == [8.0, 10.0]
    assert made == [4, 5]  # the expired inputs were never made (decoded)
    assert model.sizes == [1, 2]  # one batch of the two live items, not [2, 2] with dead ones
    assert [(s.size, s.expired) for s in stats][-1] == (2, 2)


def test_an_item_that_would_miss_its_deadline_even_alone_is_not_run(model):
    """Measured ~300 ms per image: an item with ~250 ms left when an instance takes it would
    be late whatever happens, so it is answered DEADLINE_EXCEEDED without being run."""

    async def main() -> None:
        b = Batcher([slow(0.3, model)], max_batch_size=1, max_delay_s=0.0)
        b.start()
        await asyncio.wait_for(b.submit(row(1)), HANG)  # measures the service time
        model.gate.clear()
        model.started.clear()
        first = asyncio.ensure_future(b.submit(row(2)))
        await model.wait_started()
        hopeless = asyncio.ensure_future(b.submit(row(3), deadline=time.monotonic() + 0.25))
        fine = asyncio.ensure_future(b.submit(row(4), deadline=time.monotonic() + 60))
        await let_run()
        model.gate.set()
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(hopeless, HANG)
        assert float((await asyncio.wait_for(fine, HANG))[0]) == 8.0
        await asyncio.wait_for(first, HANG)
        await b.close()

    asyncio.run(main())
    assert 6.0 not in [s for sums in model.sums for s in sums]


class FeatureModel(FakeModel):
    """A run_batch that also returns features (each row times 10) when asked, recording
    whether each batch asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[bool] = []

    def __call__(self, batch: np.ndarray, features: bool = False) -> object:
        self.asked.append(features)
        out = super().__call__(batch)
        return (out, batch * 10) if features else out


def test_features_are_fetched_only_for_a_batch_with_an_item_that_asks():
    model = FeatureModel()
    got: dict[int, np.ndarray] = {}

    async def main() -> tuple[list[np.ndarray], list[np.ndarray]]:
        b = Batcher([model], max_batch_size=8, max_delay_s=0.05)
        b.start()
        plain = await asyncio.gather(*(b.submit(row(i)) for i in range(3)))
        mixed = await asyncio.gather(
            b.submit(row(5)),
            b.submit(row(6), features=lambda f: got.__setitem__(6, f)),
            b.submit(row(7)),
        )
        await b.close()
        return plain, mixed

    plain, mixed = asyncio.run(main())
    assert [float(r[0]) for r in plain] == [0.0, 2.0, 4.0]
    assert [float(r[0]) for r in mixed] == [10.0, 12.0, 14.0]
    assert sum(model.sizes) == 6
    for batch, asked in zip(model.batches, model.asked, strict=True):
        assert asked == any((r == 6).all() for r in batch)  # asked iff the batch holds row 6
    assert list(got) == [6]  # only the item that asked gets its row of the features
    np.testing.assert_array_equal(got[6], row(6) * 10)
