"""imgclf.models.explainable: the head found at load, and the graph the sessions run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from imgclf.models.explainable import graph_to_serve, inspect_head
from imgclf.models.repository import ModelConfig
from imgclf.runtime.engine import Engine, share_weights
from imgclf.runtime.options import ExecutionOptions
from tests.tiny_model import make_tiny_model


def test_explaining_graph_outputs_the_features_and_is_removed_after(tmp_path: Path) -> None:
    path = make_tiny_model(tmp_path / "model.onnx", size=8)
    explaining = inspect_head(path, ModelConfig())
    assert explaining.feature == "nchw" and not explaining.why_not
    with graph_to_serve(path, explaining) as graph:
        assert graph != path
        session = ort.InferenceSession(str(graph))
        names = [o.name for o in session.get_outputs()]
        assert names == ["logits", "nchw"]
        x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
        logits, features = session.run(None, {"input": x})
        np.testing.assert_array_equal(features, x)
        plain = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
        np.testing.assert_array_equal(logits, plain)
    assert not graph.exists()


def test_no_head_serves_the_file_itself_and_says_why(tmp_path: Path) -> None:
    flat = make_tiny_model(tmp_path / "flat.onnx", size=8, head="flatten")
    explaining = inspect_head(flat, ModelConfig())
    assert explaining.head is None and "Identity, not global pooling" in explaining.why_not
    with graph_to_serve(flat, explaining) as graph:
        assert graph == flat
    tiny = make_tiny_model(tmp_path / "tiny.onnx", size=8)
    off = inspect_head(tiny, ModelConfig(explain=False))
    assert off.head is None and "turned off" in off.why_not
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 64)
    assert "could not be read" in inspect_head(garbage, ModelConfig()).why_not


def test_plain_runs_of_the_explaining_graph_equal_the_models_bit_for_bit() -> None:
    """The bundled digits CNN, with shared weights as the server runs it: the edited graph's
    output is the original's, and fetching the features changes nothing."""
    path = Path(__file__).resolve().parents[4] / "models" / "digits" / "1" / "model.onnx"
    explaining = inspect_head(path, ModelConfig())
    options = ExecutionOptions(providers="cpu", intra_op_threads=1)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with graph_to_serve(path, explaining) as graph:
        shared = share_weights(graph, options)
        explained = Engine(graph, options, shared, explaining.feature)
    original_shared = share_weights(path, options)
    original = Engine(path, options, original_shared)
    plain = explained.run(x)
    with_features, features = explained.run(x, features=True)
    np.testing.assert_array_equal(plain, original.run(x))
    np.testing.assert_array_equal(with_features, plain)
    assert explaining.head is not None
    assert features.shape[:2] == (3, explaining.head.weight.shape[1])
