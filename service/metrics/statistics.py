"""Per-model-version statistics in the shape of the Open Inference Protocol's ModelStatistics.

Durations are cumulative (count, nanoseconds). success/fail/compute_output count once per
request; queue, compute_input and compute_infer once per image, each image charged the whole
time of the batch it ran in (as Triton charges every request of a batch); batch statistics
once per batch of a given size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass
class BatchDurations:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    last_inference_ms: int = 0
    inference_count: int = 0
    """Images inferred (a batch of 8 counts 8)."""
    execution_count: int = 0
    """Engine runs (a batch of 8 counts 1)."""
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchDurations] = field(default_factory=dict)

    def record_batch(self, size: int, queue_s: list[float], input_s: float, infer_s: float) -> None:
        self.last_inference_ms = int(time.time() * 1000)
        self.inference_count += size
        self.execution_count += 1
        for seconds in queue_s:
            self.queue.add(seconds)
        # As Triton counts it: every request of the batch spent the whole batch's time.
        self.compute_input.add(input_s * size, size)
        self.compute_infer.add(infer_s * size, size)
        per_size = self.batches.setdefault(size, BatchDurations())
        per_size.compute_input.add(input_s)
        per_size.compute_infer.add(infer_s)

    def record_output(self, seconds: float, images: int) -> None:
        """One request's postprocessing (softmax, top-k) over its `images`."""
        self.compute_output.add(seconds)

    def record_request(self, seconds: float, ok: bool) -> None:
        (self.success if ok else self.fail).add(seconds)
