"""imgclf.models.loader: execution options per instance, and load_model / ServedModel over the real
tiny ONNX model (ONNX Runtime on CPU)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from imgclf.errors import ModelNotReady
from imgclf.metrics.prometheus import Metrics
from imgclf.models import loader as model_mod
from imgclf.models.loader import ServedModel, load_model, softmax
from imgclf.models.repository import ModelConfig, read_model_config
from imgclf.models.sessions import execution_options
from imgclf.repolayout import versions
from imgclf.runtime.cpuquota import cpus
from imgclf.runtime.engine import Engine
from tests.tiny_model import LABELS
from tests.unit.service.support import HANG, TINY_SIZE, let_run, make_repo, server_settings


def options(config: dict | None = None, instance: int = 0, instances: int = 1, **settings):
    return execution_options(
        ModelConfig(**(config or {})),
        server_settings(Path("models"), **settings),
        instance,
        instances,
    )


# --- execution_options ----------------------------------------------------------------------


def test_options_default_to_the_server_settings():
    opts = options(providers="auto", intra_op_threads=3, gpu_id=2)
    assert opts.providers == "auto"
    assert opts.intra_op_threads == 3
    assert opts.gpu_id == 2
    assert opts.tensorrt_fp16 is False


@pytest.mark.parametrize(("kind", "provider"), [("gpu", "cuda"), ("cpu", "cpu")])
def test_instance_kind_picks_the_provider(kind, provider):
    assert options({"instance_kind": kind}, providers="auto").providers == provider


def test_instance_kind_auto_takes_the_server_providers():
    assert options({"instance_kind": "auto"}, providers="tensorrt").providers == "tensorrt"


def test_config_providers_win_over_instance_kind():
    assert options({"instance_kind": "gpu", "providers": "cpu"}).providers == "cpu"
    assert options({"providers": "tensorrt"}, providers="cpu").providers == "tensorrt"


def test_require_gpu_means_cuda():
    assert options(providers="auto", require_gpu=True).providers == "cuda"


def test_require_gpu_keeps_tensorrt():
    """--providers tensorrt --require-gpu: TensorRT already refuses to run without a GPU;
    require_gpu must not silently swap it for plain CUDA."""
    assert options(providers="tensorrt", require_gpu=True).providers == "tensorrt"


def test_intra_op_threads_split_across_instances(monkeypatch):
    monkeypatch.setattr("imgclf.models.sessions.cpus", lambda: 8)
    assert options(instances=2, intra_op_threads=0).intra_op_threads == 4
    assert options(instances=3, intra_op_threads=0).intra_op_threads == 2
    assert options(instances=16, intra_op_threads=0).intra_op_threads == 1  # at least one
    assert options(instances=1, intra_op_threads=0).intra_op_threads == 8  # all the cores


def test_intra_op_threads_set_explicitly_are_not_split(monkeypatch):
    monkeypatch.setattr("imgclf.models.sessions.cpus", lambda: 8)
    assert options({"instances": 2}, intra_op_threads=3).intra_op_threads == 3
    assert options({"instances": 2, "intra_op_threads": 5}).intra_op_threads == 5


def test_gpus_round_robin_over_instances():
    config = {"instances": 3, "gpus": [1, 3]}
    assert [options(config, instance=i).gpu_id for i in range(3)] == [1, 3, 1]


def test_gpu_defaults_to_the_server_gpu():
    assert [options({"instances": 2}, instance=i, gpu_id=2).gpu_id for i in range(2)] == [2, 2]


def test_cuda_knobs_pass_through_only_when_set():
    opts = options(
        {
            "cudnn_conv_algo_search": "EXHAUSTIVE",
            "gpu_mem_limit_bytes": 1 << 30,
            "arena_extend_strategy": "kSameAsRequested",
            "tensorrt_fp16": True,
        }
    )
    assert opts.cudnn_conv_algo_search == "EXHAUSTIVE"
    assert opts.gpu_mem_limit_bytes == 1 << 30
    assert opts.arena_extend_strategy == "kSameAsRequested"
    assert opts.tensorrt_fp16 is True
    defaults = options()
    assert defaults.cudnn_conv_algo_search == "HEURISTIC"  # ExecutionOptions' own defaults
    assert defaults.gpu_mem_limit_bytes == 0


def test_cuda_graphs_from_settings_unless_the_model_says(tmp_path):
    assert options().cuda_graphs is False
    assert options(cuda_graphs=True).cuda_graphs is True
    assert options({"cuda_graphs": False}, cuda_graphs=True).cuda_graphs is False
    assert options({"cuda_graphs": True}).cuda_graphs is True


def test_tensorrt_cache_dir_from_settings(tmp_path):
    assert options(tensorrt_cache_dir=tmp_path).tensorrt_cache_dir == tmp_path


# --- load_model -----------------------------------------------------------------------------


@pytest.fixture
def warmups(monkeypatch) -> list[list[int]]:
    """Records the batch sizes of every Engine.warmup call (the real warm-up still runs)."""
    calls: list[list[int]] = []
    real = Engine.warmup

    def spy(self, batch_sizes, sample_shape):
        calls.append(list(batch_sizes))
        real(self, batch_sizes, sample_shape)

    monkeypatch.setattr(Engine, "warmup", spy)
    return calls


def load(repo: Path, name: str = "tiny", metrics: Metrics | None = None, **settings) -> ServedModel:
    (entry, *_) = versions(repo / name)
    config = read_model_config(repo / name)
    return load_model(entry, config, server_settings(repo, **settings), metrics or Metrics())


def write_config(repo: Path, name: str, config: dict) -> None:
    (repo / name / "config.json").write_text(json.dumps(config))


def test_load_model_reads_metadata_and_warms_up(tmp_path, warmups):
    make_repo(tmp_path)
    metrics = Metrics()
    model = load(tmp_path, metrics=metrics, max_batch_size=4)
    assert (model.name, model.version) == ("tiny", 1)
    assert model.metadata.labels == LABELS
    assert model.num_classes == 3
    assert model.sample_shape == (3, TINY_SIZE, TINY_SIZE)
    assert model.max_batch_size == 4
    assert model.batcher.max_batch_size == 4
    assert model.batcher.instances == 1
    assert model.default_timeout_s is None
    assert model.engine.info.provider == "CPUExecutionProvider"
    assert model.engine.buckets == []  # device buffers per bucket are for GPU sessions
    assert warmups == [[1, 2, 3, 4]]  # every batch size the batcher can form
    assert model.fingerprint == versions(tmp_path / "tiny")[0].fingerprint()
    seconds = metrics.registry.get_sample_value(
        "imgclf_model_load_duration_seconds", {"model": "tiny", "version": "1"}
    )
    assert seconds is not None
    assert seconds > 0


def test_load_model_without_warmup(tmp_path, warmups):
    make_repo(tmp_path)
    load(tmp_path, warmup=False)
    assert warmups == []


def test_every_instance_is_warmed_up(tmp_path, warmups):
    make_repo(tmp_path)
    write_config(tmp_path, "tiny", {"instances": 2, "max_batch_size": 2})
    model = load(tmp_path)
    assert len(model.engines.instances) == 2
    assert model.engines.instances[0] is not model.engines.instances[1]
    assert model.batcher.instances == 2
    assert warmups == [[1, 2], [1, 2]]


def test_fixed_batch_axis_of_one_caps_the_batch_size(tmp_path, warmups):
    make_repo(tmp_path, batch=1)
    model = load(tmp_path, max_batch_size=8)
    assert model.max_batch_size == 1
    assert model.batcher.max_batch_size == 1
    assert warmups == [[1]]


def test_fixed_batch_axis_above_one_is_served_or_refused_clearly(tmp_path):
    """A model exported with a fixed batch axis of 2 takes exactly 2 images per run. The
    loader caps max_batch_size at 2 and warms up with batch sizes 1 and 2, so ONNX Runtime
    fails the warm-up (INVALID_ARGUMENT: Got 1 Expected 2); without warm-up every batch of 1
    would fail. Acceptable: refuse the model with a clear ValueError, or serve it (padding
    batches to the fixed size)."""
    make_repo(tmp_path, batch=2)
    try:
        model = load(tmp_path)
    except ValueError as exc:
        assert "batch" in str(exc)
        return

    async def one_image() -> np.ndarray:
        model.start()
        try:
            return await asyncio.wait_for(
                model.batcher.submit(logits_of(model, (0.0, 1.0, 0.0))), HANG
            )
        finally:
            await model.retire()

    assert int(np.argmax(asyncio.run(one_image()))) == 1


def test_model_config_overrides_the_server_settings(tmp_path):
    make_repo(tmp_path)
    write_config(
        tmp_path,
        "tiny",
        {
            "max_batch_size": 3,
            "max_queue_delay_ms": 7,
            "max_queue_size": 5,
            "default_timeout_ms": 250,
            "preferred_batch_sizes": [2],
            "priority_levels": 3,
            "default_priority_level": 2,
        },
    )
    model = load(tmp_path, max_batch_size=8, max_queue_delay_ms=1, default_timeout_ms=900)
    b = model.batcher
    assert (model.max_batch_size, b.max_batch_size) == (3, 3)
    assert b.max_delay_s == pytest.approx(0.007)
    assert b.max_queue_size == 5
    assert b.preferred_batch_sizes == frozenset({2})
    assert (b.priority_levels, b.default_priority_level) == (3, 2)
    assert model.default_timeout_s == pytest.approx(0.25)


def test_default_timeout_from_the_settings(tmp_path):
    make_repo(tmp_path)
    assert load(tmp_path, default_timeout_ms=1500).default_timeout_s == pytest.approx(1.5)


def test_zero_in_the_model_config_means_no_timeout_and_no_delay(tmp_path):
    make_repo(tmp_path)
    write_config(tmp_path, "tiny", {"default_timeout_ms": 0, "max_queue_delay_ms": 0})
    model = load(tmp_path, default_timeout_ms=900, max_queue_delay_ms=5)
    assert model.default_timeout_s is None
    assert model.batcher.max_delay_s == 0


def test_label_count_mismatch_refused(tmp_path):
    """A sidecar config.json giving 2 labels to a model with 3 outputs cannot be served."""
    make_repo(tmp_path)
    (tmp_path / "tiny" / "1" / "config.json").write_text(json.dumps({"labels": ["a", "b"]}))
    with pytest.raises(ValueError, match="for one image, but the metadata names 2 labels"):
        load(tmp_path)


def test_sidecar_with_matching_labels_overrides_the_embedded_ones(tmp_path):
    make_repo(tmp_path)
    (tmp_path / "tiny" / "1" / "config.json").write_text(json.dumps({"labels": ["r", "g", "b"]}))
    assert load(tmp_path).metadata.labels == ["r", "g", "b"]


def test_sample_shape_mismatch_refused(tmp_path):
    make_repo(tmp_path)
    (tmp_path / "tiny" / "1" / "config.json").write_text(
        json.dumps({"input_size": TINY_SIZE * 2, "resize_size": TINY_SIZE * 2})
    )
    with pytest.raises(Exception, match="does not match the model input"):
        load(tmp_path)


# --- ServedModel: serving, use() and retire() -----------------------------------------------


def logits_of(model: ServedModel, rgb_means: tuple[float, float, float]) -> np.ndarray:
    t = np.empty(model.sample_shape, dtype=np.float32)
    for c, v in enumerate(rgb_means):
        t[c] = v
    return t


def test_served_model_runs_and_accounts(tmp_path):
    make_repo(tmp_path)
    model = load(tmp_path)

    async def main() -> np.ndarray:
        model.start()
        try:
            return await asyncio.wait_for(
                model.batcher.submit(logits_of(model, (0.5, 0.25, 0.125))), HANG
            )
        finally:
            await model.retire()

    out = asyncio.run(main())
    np.testing.assert_allclose(out, [2.0, 1.0, 0.5], atol=1e-6)  # the tiny model: 4 x mean
    probs = model.probabilities(out[None, :])
    assert probs.shape == (1, 3)
    assert probs.sum() == pytest.approx(1.0, abs=1e-6)
    assert model.stats.inference_count == 1
    assert model.stats.execution_count == 1


def test_bound_sessions_get_buffers_per_batch_bucket(tmp_path, monkeypatch, caplog):
    # A GPU session binds its IO; on this CPU host the tiny model's sessions are made to
    # bind (their buckets then live in CPU memory), the rest of load_model as on a GPU.
    real = model_mod.create_engines

    def binding_engines(*args, **kwargs):
        engines = real(*args, **kwargs)
        for eng in engines.instances:
            eng._bind = True
            eng.info = dataclasses.replace(eng.info, io_binding=True)
        return engines

    monkeypatch.setattr(model_mod, "create_engines", binding_engines)
    make_repo(tmp_path)
    with caplog.at_level(logging.INFO, logger="imgclf.models.loader"):
        model = load(tmp_path, max_batch_size=6, instances=2)
    assert [e.buckets for e in model.engines.instances] == [[1, 2, 4, 6], [1, 2, 4, 6]]
    assert "IO binding, batch buckets 1,2,4,6 (no CUDA graphs)" in caplog.text
    batch = np.stack([logits_of(model, (0.5, 0.25, 0.125))] * 3)
    np.testing.assert_allclose(model.engine.run(batch), [[2.0, 1.0, 0.5]] * 3, atol=1e-6)


def test_probabilities_model_output_is_passed_through(tmp_path):
    make_repo(tmp_path)
    (tmp_path / "tiny" / "1" / "config.json").write_text(json.dumps({"output": "probabilities"}))
    model = load(tmp_path)
    out = np.array([[0.2, 0.3, 0.5]], dtype=np.float32)
    np.testing.assert_array_equal(model.probabilities(out), out)


def test_retire_waits_for_every_holder(tmp_path):
    make_repo(tmp_path)
    model = load(tmp_path, warmup=False)
    tensor = logits_of(model, (1.0, 0.0, 0.0))

    async def main() -> None:
        model.start()
        with model.use():
            with model.use():  # two requests hold it
                retiring = asyncio.ensure_future(model.retire())
                await let_run()
                await asyncio.sleep(0.05)
                assert not retiring.done()
            await let_run()
            assert not retiring.done()  # one holder left
            # Still serving for the request that holds it.
            out = await asyncio.wait_for(model.batcher.submit(tensor), HANG)
            assert int(np.argmax(out)) == 0
        await asyncio.wait_for(retiring, HANG)
        with pytest.raises(ModelNotReady):
            await model.batcher.submit(tensor)

    asyncio.run(main())


def test_retire_without_holders_is_immediate(tmp_path):
    """With no request holding the model, retiring does not wait for anything: within the
    same few turns of the event loop the batcher already refuses new work."""
    make_repo(tmp_path)
    model = load(tmp_path, warmup=False)
    tensor = logits_of(model, (1.0, 0.0, 0.0))

    async def main() -> None:
        model.start()
        with model.use():
            pass
        retiring = asyncio.ensure_future(model.retire())
        await let_run()
        with pytest.raises(ModelNotReady):
            await model.batcher.submit(tensor)
        await asyncio.wait_for(retiring, HANG)

    asyncio.run(main())


def test_use_before_start_is_a_programming_error(tmp_path):
    make_repo(tmp_path)
    model = load(tmp_path, warmup=False)
    with pytest.raises(AssertionError, match="not started"), model.use():
        pass


@pytest.fixture
def slow(monkeypatch) -> None:
    """Every model counts as slow enough for intra-op threads (the tiny one is not)."""
    monkeypatch.setattr("imgclf.models.sizing.BATCHING_PAYS_BELOW_S", 0.0)


def test_auto_instances_one_single_threaded_session_per_core_and_a_solo(tmp_path, warmups, slow):
    make_repo(tmp_path)
    model = load(tmp_path, instances=0, intra_op_threads=0, max_batch_size=2, solo_session=True)
    assert len(model.engines.instances) == cpus()
    assert all(e.options.intra_op_threads == 1 for e in model.engines.instances)
    assert model.batcher.instances == cpus()
    if cpus() > 1:
        solo = model.engines.solo
        assert solo is not None
        assert solo.options.intra_op_threads == cpus()
        assert solo.options.allow_spinning  # solo_spinning defaults on
        assert warmups == [[1, 2]] * (cpus() + 1)  # every session, the solo one too
    else:
        assert model.engines.solo is None


def test_auto_on_many_cores(tmp_path, monkeypatch, slow):
    """Counted on a pretend 4-core machine: four 1-thread instances and a 4-thread solo."""
    monkeypatch.setattr("imgclf.models.sessions.cpus", lambda: 4)
    make_repo(tmp_path)
    model = load(tmp_path, instances=0, intra_op_threads=0, warmup=False, solo_session=True,
                 solo_spinning=False)  # fmt: skip
    assert [e.options.intra_op_threads for e in model.engines.instances] == [1, 1, 1, 1]
    assert model.engines.solo is not None
    assert model.engines.solo.options.intra_op_threads == 4
    assert model.engines.solo.options.allow_spinning is False


def test_no_solo_when_an_instance_spans_every_core_or_when_off(tmp_path, monkeypatch, slow):
    monkeypatch.setattr("imgclf.models.sessions.cpus", lambda: 4)
    make_repo(tmp_path)
    wide = load(tmp_path, instances=1, intra_op_threads=0, warmup=False, solo_session=True)
    assert wide.engines.instances[0].options.intra_op_threads == 4
    assert wide.engines.solo is None
    off = load(tmp_path, instances=0, intra_op_threads=0, warmup=False, solo_session=False)
    assert len(off.engines.instances) == 4
    assert off.engines.solo is None
    two = load(tmp_path, instances=2, intra_op_threads=0, warmup=False, solo_session=True)
    assert [e.options.intra_op_threads for e in two.engines.instances] == [2, 2]
    assert two.engines.solo is not None


def test_no_solo_for_a_fast_model(tmp_path, monkeypatch):
    """The tiny model runs an image in microseconds: intra-op threads cannot pay."""
    monkeypatch.setattr("imgclf.models.sessions.cpus", lambda: 4)
    make_repo(tmp_path)
    model = load(tmp_path, instances=0, intra_op_threads=0, warmup=False, solo_session=True)
    assert len(model.engines.instances) == 4
    assert model.engines.solo is None


def test_auto_batch_size_batches_a_fast_model_on_cpu(tmp_path, warmups):
    make_repo(tmp_path)  # the tiny model runs an image in microseconds
    model = load(tmp_path, max_batch_size=0)
    assert model.max_batch_size == 8
    assert warmups == [list(range(1, 9))]


def test_auto_batch_size_is_four_for_a_slow_model_on_cpu(tmp_path, slow):
    make_repo(tmp_path)
    assert load(tmp_path, max_batch_size=0).max_batch_size == 4


def test_a_lone_request_runs_on_the_solo_session_and_is_counted(tmp_path, slow):
    make_repo(tmp_path)
    metrics = Metrics()
    model = load(tmp_path, metrics=metrics, instances=0, intra_op_threads=0, solo_session=True,
                 warmup=False)  # fmt: skip
    if model.engines.solo is None:
        pytest.skip("one core: no solo session")

    async def main() -> np.ndarray:
        model.start()
        row = await asyncio.wait_for(
            model.batcher.submit(np.zeros(model.sample_shape, np.float32)), HANG
        )
        await model.retire()
        return row

    assert asyncio.run(main()).shape == (3,)
    labels = {"model": "tiny", "version": "1"}
    assert metrics.registry.get_sample_value("imgclf_solo_batches_total", labels) == 1.0


# --- softmax --------------------------------------------------------------------------------


def test_softmax_rows_sum_to_one():
    logits = np.random.default_rng(0).normal(0, 3, (7, 10)).astype(np.float32)
    probs = softmax(logits)
    assert probs.dtype == np.float32
    assert probs.shape == (7, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    exp = np.exp(logits.astype(np.float64))
    np.testing.assert_allclose(probs, exp / exp.sum(axis=1, keepdims=True), atol=1e-6)
    assert (probs.argmax(axis=1) == logits.argmax(axis=1)).all()


def test_softmax_stable_for_large_logits():
    logits = np.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]], dtype=np.float32)
    probs = softmax(logits)
    assert np.isfinite(probs).all()
    small = softmax(np.array([[0.0, 1.0, 2.0], [0.0, -1.0, -2.0]], dtype=np.float32))
    np.testing.assert_allclose(probs, small, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_softmax_of_float64_is_float32():
    probs = softmax(np.array([[1.0, 2.0]], dtype=np.float64))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs[0], [1 / (1 + np.e), np.e / (1 + np.e)], atol=1e-6)
