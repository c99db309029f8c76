"""How a model's batches are sized at load on the CPU, from its measured time per image: the max
batch size when none is configured, and whether the model is slow enough for a solo session
(an instance over every core, imgclf.runtime.cores) to pay. docs/performance.md has the
measurements."""

from __future__ import annotations

import time

import numpy as np

from imgclf.runtime.engine import Engine

AUTO_MAX_BATCH = 8
SLOW_MODEL_MAX_BATCH = 4
"""On CPU, the auto max batch size of a model that takes BATCHING_PAYS_BELOW_S or more per
image (see auto_batch_size)."""
BATCHING_PAYS_BELOW_S = 0.005
"""On CPU: below this time per image, per-call overhead dominates a run. Batches amortise it;
intra-op threads (the solo session) do not pay, and their spinning costs the cores more than
it saves."""


def seconds_per_image(engine: Engine, sample_shape: tuple[int, ...]) -> float:
    """The best of 5 timed single-image runs (after one untimed)."""
    batch = np.zeros((1, *sample_shape), dtype=np.float32)
    engine.run(batch)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        engine.run(batch)
        best = min(best, time.perf_counter() - started)
    return best


def auto_batch_size(per_image: float | None, limit: int) -> int:
    """The max batch size when none is configured, from the CPU seconds per image (None on a
    GPU, where batches pay: `limit`). A model that takes well under a few milliseconds per
    image is dominated by per-call overhead, which batches amortise: `limit`. A slower one
    gains little: measured for EfficientNet-Lite0 on 2 cores, batches of 4 on a
    single-threaded session cost from 12 % more to 8 % less per image than single images in
    the limit, and served 1-18 % more images/s at 16 clients in four side-by-side runs. With
    no queue delay a batch only forms from images already waiting, so a lone request never
    waits for one: SLOW_MODEL_MAX_BATCH."""
    if per_image is None or per_image < BATCHING_PAYS_BELOW_S:
        return limit
    return min(limit, SLOW_MODEL_MAX_BATCH)


def solo_pays(per_image: float | None) -> bool:
    """Whether a model measured at `per_image` CPU seconds per image (None: not measured) is
    slow enough for a solo session's intra-op threads to pay."""
    return per_image is not None and per_image >= BATCHING_PAYS_BELOW_S
