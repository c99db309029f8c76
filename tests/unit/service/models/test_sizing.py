"""imgclf.models.sizing: the auto max batch size and whether a solo session pays, from the
measured CPU time per image (the loader's tests check both on real loads)."""

from __future__ import annotations

from imgclf.models.sizing import (
    BATCHING_PAYS_BELOW_S,
    SLOW_MODEL_MAX_BATCH,
    auto_batch_size,
    solo_pays,
)


def test_a_fast_model_or_a_gpu_batches_up_to_the_limit() -> None:
    assert auto_batch_size(None, 8) == 8  # a GPU: not measured, batches pay
    assert auto_batch_size(BATCHING_PAYS_BELOW_S / 10, 8) == 8


def test_a_slow_model_batches_a_few() -> None:
    assert auto_batch_size(BATCHING_PAYS_BELOW_S, 8) == SLOW_MODEL_MAX_BATCH
    assert auto_batch_size(1.0, 2) == 2  # never beyond the limit


def test_a_solo_session_pays_only_for_a_measured_slow_model() -> None:
    assert not solo_pays(None)
    assert not solo_pays(BATCHING_PAYS_BELOW_S / 2)
    assert solo_pays(BATCHING_PAYS_BELOW_S)
