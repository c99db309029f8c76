"""imgclf.runtime.sharedweights through the engine and the loader: the sessions of a model
version on CPU take one copy of its optimised weights, and give exactly the outputs of
sessions that hold their own (real ONNX Runtime, the bundled EfficientNet-Lite0, real
photos)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from imgclf.imaging import preprocess_bytes
from imgclf.metrics.prometheus import Metrics
from imgclf.models.loader import ServedModel, load_model
from imgclf.models.repository import read_model_config
from imgclf.repolayout import versions
from imgclf.runtime import providers as providers_mod
from imgclf.runtime.engine import share_weights
from imgclf.runtime.options import ExecutionOptions, session_options
from imgclf.runtime.providers import CPU, CUDA
from imgclf.runtime.sharedweights import MIN_SHARED_BYTES, SharedWeights, initializers
from tests.unit.service.support import make_repo, server_settings

BUNDLED = Path(__file__).resolve().parents[4] / "models"
LITE0 = BUNDLED / "efficientnet_lite0" / "1" / "model.onnx"


def load(repo: Path, name: str, metrics: Metrics | None = None, **settings) -> ServedModel:
    (entry, *_) = versions(repo / name)
    config = read_model_config(repo / name)
    return load_model(entry, config, server_settings(repo, **settings), metrics or Metrics())


def test_shared_sessions_give_the_unshared_outputs_bit_for_bit(photos):
    settings = {"instances": 2, "solo_session": True, "max_batch_size": 4, "warmup": False}
    shared = load(BUNDLED, "efficientnet_lite0", share_weights=True, **settings)
    unshared = load(BUNDLED, "efficientnet_lite0", share_weights=False, **settings)
    assert shared.engines.shared is not None
    assert unshared.engines.shared is None
    spec = shared.metadata.preprocessing
    batch = np.stack([preprocess_bytes(data, spec) for data in photos.values()])
    assert len(shared.engines.all) == len(unshared.engines.all)
    for mine, theirs in zip(shared.engines.all, unshared.engines.all, strict=True):
        assert mine.shares_weights and not theirs.shares_weights
        assert mine.options == theirs.options
        for images in (batch, batch[:1], batch[2:3]):
            got, want = mine.run(images), theirs.run(images)
            assert got.dtype == want.dtype == np.float32
            assert np.array_equal(got, want), np.abs(got - want).max()
    # The photos are classified at all (the outputs compared are real predictions).
    assert len(set(shared.engine.run(batch).argmax(axis=1))) > 1


def test_every_session_of_a_version_takes_the_one_copy(tmp_path):
    make_repo(tmp_path)
    model = load(tmp_path, "tiny", instances=3)
    shared = model.engines.shared
    assert shared is not None
    assert [e.shares_weights for e in model.engines.all] == [True] * 3
    assert shared.folder is None, "the optimised model's file is removed after the load"
    with pytest.raises(RuntimeError, match="released"):
        shared.session(ort.SessionOptions())


def test_share_weights_off_gives_each_session_its_own(tmp_path):
    make_repo(tmp_path)
    model = load(tmp_path, "tiny", instances=2, share_weights=False)
    assert model.engines.shared is None
    assert not any(e.shares_weights for e in model.engines.all)


def test_gpu_sessions_keep_their_own_weights(monkeypatch):
    """A session that would run on a GPU provider copies the weights to its device anyway,
    and the CPU-optimised graph is not for it: no shared weights."""
    monkeypatch.setattr(providers_mod.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(providers_mod, "cuda_driver_present", lambda: True)
    assert share_weights(LITE0, ExecutionOptions(providers="cuda")) is None


def test_the_weights_are_those_of_the_optimised_graph(tmp_path):
    """`initializers` reads the initializers ONNX Runtime saved exactly as onnx does."""
    options = session_options(ExecutionOptions(providers="cpu", intra_op_threads=1))
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(LITE0), options, providers=[CPU])
    saved = (tmp_path / "optimised.onnx").read_bytes()
    want = {
        t.name: numpy_helper.to_array(t)
        for t in onnx.load_from_string(saved).graph.initializer
        if numpy_helper.to_array(t).nbytes >= MIN_SHARED_BYTES
    }
    got = initializers(saved)
    assert got.keys() == want.keys()
    for name, array in got.items():
        assert array.dtype == want[name].dtype and np.array_equal(array, want[name]), name
    shared = SharedWeights.build(LITE0, session_options(ExecutionOptions(providers="cpu")))
    # The optimised weights of EfficientNet-Lite0 (batch norms folded in): about its file.
    assert 0.8 * LITE0.stat().st_size < shared.nbytes < 1.2 * LITE0.stat().st_size


def test_the_load_reports_the_memory_the_version_took(tmp_path, caplog):
    make_repo(tmp_path)
    metrics = Metrics()
    with caplog.at_level(logging.INFO, logger="imgclf.models.loader"):
        model = load(tmp_path, "tiny", metrics, instances=2)
    assert model.memory_bytes is not None
    labels = {"model": "tiny", "version": "1"}
    gauge = metrics.registry.get_sample_value("imgclf_model_memory_bytes", labels)
    assert gauge == model.memory_bytes
    assert f"{model.memory_bytes / 1e6:.1f} MB resident, weights " in caplog.text
    assert "shared by 2 sessions" in caplog.text


def test_a_model_whose_weights_cannot_be_shared_loads_unshared(tmp_path, monkeypatch, caplog):
    make_repo(tmp_path)

    def fail(*args):
        raise ValueError("no room")

    monkeypatch.setattr(SharedWeights, "build", fail)
    with caplog.at_level(logging.WARNING, logger="imgclf.runtime.engine"):
        model = load(tmp_path, "tiny", instances=2)
    assert model.engines.shared is None
    assert not any(e.shares_weights for e in model.engines.all)
    assert "weights not shared, each session loads its own: no room" in caplog.text
