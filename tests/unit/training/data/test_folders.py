"""imgclf.training.data.folders: class-stratified sampling."""

from __future__ import annotations

import numpy as np

from imgclf.training.data.folders import stratified_sample


def test_stratified_sample_keeps_class_shares_and_is_reproducible():
    labels = np.array([0] * 80 + [1] * 20)
    picked = stratified_sample(labels, 30, seed=3)
    assert len(picked) == 30 and len(set(picked)) == 30
    assert np.bincount(labels[picked]).tolist() == [24, 6]
    assert np.array_equal(picked, stratified_sample(labels, 30, seed=3))
    assert not np.array_equal(picked, stratified_sample(labels, 30, seed=4))
    assert len(stratified_sample(labels, 500, 0)) == 100
