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
