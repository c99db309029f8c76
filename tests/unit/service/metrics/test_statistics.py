"""imgclf.metrics.statistics: per-model-version statistics (counts and cumulative nanoseconds)."""

from __future__ import annotations

import time

from imgclf.metrics.statistics import BatchDurations, Duration, ModelStats

MS = 1_000_000
"""Nanoseconds in a millisecond."""


def test_duration_add():
    d = Duration()
    d.add(0.25)
    d.add(0.5, count=3)
    assert (d.count, d.ns) == (4, 750 * MS)


def test_a_fresh_model_stats_is_all_zero():
    s = ModelStats()
    assert (s.last_inference_ms, s.inference_count, s.execution_count) == (0, 0, 0)
    for d in (s.success, s.fail, s.queue, s.compute_input, s.compute_infer, s.compute_output):
        assert (d.count, d.ns) == (0, 0)
    assert s.batches == {}


def test_record_batch():
    s = ModelStats()
    before = int(time.time() * 1000)
    s.record_batch(4, [0.001, 0.002, 0.003, 0.004], input_s=0.010, infer_s=0.500)
    after = int(time.time() * 1000)

    assert before <= s.last_inference_ms <= after
    assert s.inference_count == 4  # images
    assert s.execution_count == 1  # engine runs
    assert (s.queue.count, s.queue.ns) == (4, 10 * MS)  # one queue time per image
    # As Triton counts: each image of the batch spent the whole batch's time.
    assert (s.compute_input.count, s.compute_input.ns) == (4, 40 * MS)
    assert (s.compute_infer.count, s.compute_infer.ns) == (4, 2000 * MS)
    assert set(s.batches) == {4}
    per_size = s.batches[4]
    assert (per_size.compute_input.count, per_size.compute_input.ns) == (1, 10 * MS)
    assert (per_size.compute_infer.count, per_size.compute_infer.ns) == (1, 500 * MS)
    assert (per_size.compute_output.count, per_size.compute_output.ns) == (0, 0)


def test_record_batch_accumulates_per_batch_size():
    s = ModelStats()
    s.record_batch(2, [0.001, 0.001], 0.002, 0.020)
    s.record_batch(1, [0.004], 0.001, 0.010)
    s.record_batch(2, [0.002, 0.002], 0.004, 0.030)

    assert s.inference_count == 5
    assert s.execution_count == 3
    assert (s.queue.count, s.queue.ns) == (5, 10 * MS)
    assert (s.compute_input.count, s.compute_input.ns) == (5, (2 * 2 + 1 + 4 * 2) * MS)
    assert (s.compute_infer.count, s.compute_infer.ns) == (5, (20 * 2 + 10 + 30 * 2) * MS)
    assert sorted(s.batches) == [1, 2]
    two, one = s.batches[2], s.batches[1]
    assert (two.compute_infer.count, two.compute_infer.ns) == (2, 50 * MS)
    assert (two.compute_input.count, two.compute_input.ns) == (2, 6 * MS)
    assert (one.compute_infer.count, one.compute_infer.ns) == (1, 10 * MS)
    assert isinstance(one, BatchDurations)


def test_record_output():
    s = ModelStats()
    s.record_output(0.003, images=3)
    s.record_output(0.001, images=1)
    assert (s.compute_output.count, s.compute_output.ns) == (2, 4 * MS)  # once per request
    assert s.inference_count == 0  # output time alone is no inference


def test_record_request_success_and_failure():
    s = ModelStats()
    s.record_request(0.010, ok=True)
    s.record_request(0.020, ok=True)
    s.record_request(0.005, ok=False)
    assert (s.success.count, s.success.ns) == (2, 30 * MS)
    assert (s.fail.count, s.fail.ns) == (1, 5 * MS)
