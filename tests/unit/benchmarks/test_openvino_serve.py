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


def test_the_harness_serves_a_model_through_imgclf_serve(tmp_path: Path) -> None:
    """`python -m benchmarks.openvino_serve serve` loads through the real loader (which asks
    for a feature output the harness has not: it serves without maps) and classifies."""
    import shutil
    import sys

    from imgclf.client import Client, tensor_image
    from imgclf.client.bench.launcher import free_port, launch, wait_serving

    repo = tmp_path / "repo"
    shutil.copytree(DIGITS.parents[1], repo / "digits")
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.openvino_serve", "serve", "--no-http",
           "--model-repository", str(repo), "--host", "127.0.0.1", "--grpc-port", str(port),
           "--metrics-port", str(free_port()), "--instances", "1"]  # fmt: skip
    log = tmp_path / "ov.log"
    proc = launch(cmd, log)
    try:
        wait_serving(f"127.0.0.1:{port}", proc, log, timeout=120)
        x = np.random.default_rng(1).standard_normal((3, 32, 32)).astype(np.float32)
        with Client(f"127.0.0.1:{port}") as client:
            reply = client.classify([tensor_image(x)], model="digits", top_k=3)
        (result,) = reply.results
        assert len(result.probabilities) == 10 and len(result.top) == 3
        assert abs(sum(result.probabilities) - 1) < 1e-4
        expected = Engine(DIGITS, ExecutionOptions(providers="cpu")).run(x[None])[0]
        assert result.top[0].index == int(np.argmax(expected))
    finally:
        proc.terminate()
        proc.wait(60)
    assert "OpenVINO measurement harness" in log.read_text()
