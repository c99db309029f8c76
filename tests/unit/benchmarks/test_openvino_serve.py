"""benchmarks.openvino_serve: the OpenVINO engine answers what the ONNX Runtime engine
answers, through the same interface (openvino comes with the bench extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.openvino_serve import OpenVinoEngine
from imgclf.errors import InvalidInput
from imgclf.repolayout import MODEL_FILE
from imgclf.runtime.engine import Engine
from imgclf.runtime.options import ExecutionOptions

DIGITS = Path(__file__).parents[3] / "models" / "digits" / "1" / MODEL_FILE


def test_openvino_engine_matches_onnx_runtime_on_every_batch_size():
    options = ExecutionOptions(providers="cpu", intra_op_threads=1)
    ov, ref = OpenVinoEngine(DIGITS, options), Engine(DIGITS, options)
    assert ov.info.input_shape == ref.info.input_shape
    assert ov.metadata_props == ref.metadata_props
    assert ov.output_shape_for_one((3, 32, 32)) == ref.output_shape_for_one((3, 32, 32))
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    for n in (1, 3, 4):
        np.testing.assert_allclose(ov.run(x[:n]), ref.run(x[:n]), atol=1e-3)
    with pytest.raises(InvalidInput):
        ov.check_sample_shape((3, 31, 32))
