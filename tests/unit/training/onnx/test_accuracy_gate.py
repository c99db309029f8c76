"""imgclf.training.onnx.accuracy_gate: each threshold, on probabilities built by hand."""

from __future__ import annotations

import numpy as np
import pytest

from imgclf.training.onnx.accuracy_gate import GateThresholds, accuracy_gate


def test_the_gate_thresholds():
    eye = np.eye(4)
    ref = np.tile(eye, (25, 1))  # 100 images, 25 per class, all correct
    labels = ref.argmax(1)
    assert accuracy_gate(ref, ref, labels).ok
    one_wrong = ref.copy()
    one_wrong[0] = eye[1]  # one image of class 0 flips: 1 point, 4 points of class 0 recall
    report = accuracy_gate(ref, one_wrong, labels, ["a", "b", "c", "d"])
    assert report.agreement == 99.0 and report.int8_accuracy == 99.0
    assert report.worst_class == "a" and report.worst_class_recall_drop == pytest.approx(4.0)
    assert report.failures == ["class 'a' recall drop 4.00 > 3 points"]
    assert accuracy_gate(ref, one_wrong, labels, thresholds=GateThresholds(1, 98, 5)).ok
    three_wrong = one_wrong.copy()
    three_wrong[[1, 2]] = eye[2], eye[3]  # classes 1 and 2 lose one each
    report = accuracy_gate(ref, three_wrong, labels, thresholds=GateThresholds(1, 97, 5))
    assert report.failures == ["top-1 accuracy drop 3.00 > 1 points"]
    assert accuracy_gate(ref, three_wrong, labels, thresholds=GateThresholds(3, 97, 5)).ok
    report = accuracy_gate(ref, three_wrong, thresholds=GateThresholds(1, 97, 5))  # no labels
    assert report.failures == [] and report.float_accuracy is None
    assert not accuracy_gate(ref, three_wrong, thresholds=GateThresholds(1, 98, 5)).ok


def test_agreement_on_clear_decisions_is_reported_not_gated():
    float_probs = np.array(
        [[0.9, 0.1, 0.0], [0.5, 0.45, 0.05], [0.3, 0.6, 0.1], [0.34, 0.33, 0.33]]
    )
    int8_probs = np.array([[0.8, 0.2, 0.0], [0.45, 0.5, 0.05], [0.5, 0.4, 0.1], [0.3, 0.4, 0.3]])
    report = accuracy_gate(float_probs, int8_probs)
    assert report.agreement == 25.0 and not report.ok  # three of four flipped
    assert report.clear_images == 2  # margins 0.8 and 0.3; 0.05 and 0.01 are near-ties
    assert report.clear_agreement == 50.0
    assert "agreement 50.00 % on the 2 images float decides by >= 0.1" in str(report)
    assert report.to_dict()["clear_agreement"] == 50.0
    ties = accuracy_gate(np.full((2, 2), 0.5), np.full((2, 2), 0.5))
    assert ties.clear_images == 0 and ties.clear_agreement is None
