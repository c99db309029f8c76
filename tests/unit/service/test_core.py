"""service.core: the data plane over a real tiny ONNX model (ONNX Runtime on CPU)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from service.core import Core, ImageInput, top_k
from service.engine import softmax
from service.errors import DeadlineExceeded, InvalidInput, ModelNotFound, ModelNotReady
from tests.tiny_model import LABELS
from tests.unit.service.support import TINY_SIZE, make_core, make_repo, serving, solid

RED, GREEN, BLUE = (230, 20, 10), (15, 200, 30), (5, 25, 240)


def classify(core: Core, images: list[ImageInput], model: str = "tiny", **kwargs):
    async def main():
        async with serving(core):
            return await core.classify(model, images, **kwargs)

    return asyncio.run(main())


def fails(core: Core, images: list[ImageInput], error: type[Exception], model: str = "tiny", **kw):
    """Run a classify expected to raise `error`; returns the exception."""
    with pytest.raises(error) as info:
        classify(core, images, model=model, **kw)
    return info.value


def channel_tensor(channel: int) -> np.ndarray:
    t = np.zeros((3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    t[channel] = 1.0
    return t


def requests(core: Core, code: str, model: str = "tiny", version: str = "1") -> float:
    value = core.metrics.registry.get_sample_value(
        "imgclf_requests_total", {"model": model, "version": version, "code": code}
    )
    return value or 0.0


@pytest.fixture
def core(tiny_repo: Path) -> Core:
    return make_core(tiny_repo)


# --- classification -------------------------------------------------------------------------


@pytest.mark.parametrize(("rgb", "label"), [(RED, "red"), (GREEN, "green"), (BLUE, "blue")])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_solid_colour_images(core, rgb, label, fmt):
    result = classify(core, [ImageInput(encoded=solid(rgb, fmt))])
    assert (result.model, result.version) == ("tiny", 1)
    (c,) = result.results
    assert c.top[0].label == label
    assert c.top[0].index == LABELS.index(label)
    assert c.probabilities.shape == (3,)
    assert c.probabilities.sum() == pytest.approx(1.0, abs=1e-6)


def test_several_images_keep_their_order(core):
    images = [ImageInput(encoded=solid(c)) for c in (BLUE, RED, GREEN, RED)]
    result = classify(core, images)
    assert [c.top[0].label for c in result.results] == ["blue", "red", "green", "red"]


def test_probabilities_are_softmax_of_the_model(core):
    img = np.zeros((3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    img[0], img[1], img[2] = 0.5, 0.25, 0.125
    (c,) = classify(core, [ImageInput(tensor=img)]).results
    expected = softmax(np.array([[2.0, 1.0, 0.5]], dtype=np.float32))[0]
    np.testing.assert_allclose(c.probabilities, expected, atol=1e-6)
    assert [s.label for s in c.top] == ["red", "green", "blue"]
    assert [s.probability for s in c.top] == pytest.approx(sorted(expected, reverse=True))


def test_tensor_inputs(core):
    images = [ImageInput(tensor=channel_tensor(ch)) for ch in (2, 0, 1)]
    result = classify(core, images)
    assert [c.top[0].label for c in result.results] == ["blue", "red", "green"]


def test_mixed_tensor_and_encoded(core):
    images = [ImageInput(tensor=channel_tensor(1)), ImageInput(encoded=solid(BLUE))]
    result = classify(core, images)
    assert [c.top[0].label for c in result.results] == ["green", "blue"]


def test_top_k_default_capped_to_classes(core):
    assert core.settings.default_top_k == 5
    (c,) = classify(core, [ImageInput(encoded=solid(RED))]).results
    assert len(c.top) == 3  # only 3 classes
    probs = [s.probability for s in c.top]
    assert probs == sorted(probs, reverse=True)
    assert sorted(s.index for s in c.top) == [0, 1, 2]


def test_top_k_default_from_settings(tiny_repo):
    core = make_core(tiny_repo, default_top_k=2)
    (c,) = classify(core, [ImageInput(encoded=solid(GREEN))]).results
    assert len(c.top) == 2
    assert c.top[0].label == "green"


@pytest.mark.parametrize(("k", "n"), [(1, 1), (2, 2), (3, 3), (1000, 3)])
def test_top_k_requested(core, k, n):
    (c,) = classify(core, [ImageInput(encoded=solid(BLUE))], top=k).results
    assert len(c.top) == n
    assert c.top[0].label == "blue"


def test_top_k_helper_ties_lower_index_first():
    scores = top_k(np.array([0.2, 0.4, 0.4], dtype=np.float32), 5, ["a", "b", "c"])
    assert [(s.index, s.label) for s in scores] == [(1, "b"), (2, "c"), (0, "a")]


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [-1, 1001])
def test_invalid_top_k(core, k):
    err = fails(core, [ImageInput(encoded=solid(RED))], InvalidInput, top=k)
    assert "top_k must be between 0 and 1000" in str(err)


def test_no_images(core):
    assert "no image" in str(fails(core, [], InvalidInput))


def test_too_many_images(tiny_repo):
    core = make_core(tiny_repo, max_images_per_request=2)
    images = [ImageInput(tensor=channel_tensor(0))] * 3
    assert "more than the limit of 2" in str(fails(core, images, InvalidInput))


@pytest.mark.parametrize(
    "shape",
    [(3, TINY_SIZE, TINY_SIZE + 1), (1, 3, TINY_SIZE, TINY_SIZE), (TINY_SIZE, TINY_SIZE, 3)],
)
def test_wrong_tensor_shape(core, shape):
    images = [ImageInput(tensor=channel_tensor(0)), ImageInput(tensor=np.zeros(shape, np.float32))]
    assert str(fails(core, images, InvalidInput)).startswith("image 1: tensor shape")


def test_image_with_nothing(core):
    err = fails(core, [ImageInput()], InvalidInput)
    assert "neither encoded bytes nor a tensor" in str(err)


def test_undecodable_image(core):
    images = [ImageInput(encoded=solid(RED)), ImageInput(encoded=b"not an image at all")]
    assert "not a decodable image" in str(fails(core, images, InvalidInput))


def test_pixel_limit_from_settings(tiny_repo):
    core = make_core(tiny_repo, max_pixels=100)
    err = fails(core, [ImageInput(encoded=solid(RED, size=(11, 10)))], InvalidInput)
    assert "over the limit of 100" in str(err)


def test_unknown_model(core):
    assert "'nope' is not loaded" in str(fails(core, [ImageInput()], ModelNotFound, model="nope"))


def test_unknown_version(core):
    err = fails(core, [ImageInput(tensor=channel_tensor(0))], ModelNotFound, version=2)
    assert "no loaded version 2" in str(err)


def test_explicit_version_and_default_model(core):
    result = classify(core, [ImageInput(tensor=channel_tensor(0))], model="", version=1)
    assert (result.model, result.version) == ("tiny", 1)


def test_not_ready_before_start(core):
    async def main():
        try:
            with pytest.raises(ModelNotReady):
                await core.classify("tiny", [ImageInput(tensor=channel_tensor(0))])
        finally:
            await core.close()

    asyncio.run(main())
    assert requests(core, "UNAVAILABLE", model="", version="") == 1


def test_not_ready_while_draining(core):
    async def main():
        async with serving(core):
            assert core.ready
            await core.classify("tiny", [ImageInput(tensor=channel_tensor(0))])
            core.begin_drain()
            assert not core.ready
            with pytest.raises(ModelNotReady):
                await core.classify("tiny", [ImageInput(tensor=channel_tensor(0))])

    asyncio.run(main())


def test_deadline_passed(core):
    err = fails(
        core,
        [ImageInput(tensor=channel_tensor(0))],
        DeadlineExceeded,
        deadline=time.monotonic() - 1.0,
    )
    assert isinstance(err, DeadlineExceeded)
    assert requests(core, "DEADLINE_EXCEEDED") == 1


# --- metrics --------------------------------------------------------------------------------


def test_metrics_count_requests_by_code(core):
    r = core.metrics.registry

    async def main():
        async with serving(core):
            await core.classify("tiny", [ImageInput(encoded=solid(RED))] * 2)
            await core.classify("tiny", [ImageInput(tensor=channel_tensor(1))])
            for images, model in [([], "tiny"), ([ImageInput()], "nope")]:
                with pytest.raises((InvalidInput, ModelNotFound)):
                    await core.classify(model, images)

    asyncio.run(main())

    assert requests(core, "OK") == 2
    assert requests(core, "INVALID_ARGUMENT") == 1
    assert requests(core, "NOT_FOUND", model="", version="") == 1
    assert requests(core, "NOT_FOUND") == 0
    assert r.get_sample_value("imgclf_images_total", {"model": "tiny", "version": "1"}) == 3
    assert r.get_sample_value("imgclf_inflight_requests") == 0
    mv = {"model": "tiny", "version": "1"}
    assert r.get_sample_value("imgclf_request_duration_seconds_count", mv) == 2
    assert r.get_sample_value("imgclf_preprocess_duration_seconds_count", mv) == 2  # encoded only
    assert r.get_sample_value("imgclf_batch_size_sum", mv) == 3
    assert r.get_sample_value("imgclf_queue_duration_seconds_count", mv) == 3
    info = {**mv, "provider": "CPUExecutionProvider"}
    assert r.get_sample_value("imgclf_model_info", info) == 1


# --- loading --------------------------------------------------------------------------------


def test_load_all_skips_what_is_not_a_model(tmp_path):
    make_repo(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")
    (tmp_path / "README.md").write_text("not a model")
    core = make_core(tmp_path)
    try:
        assert sorted(core.models) == ["tiny"]
    finally:
        asyncio.run(core.close())


def test_load_all_without_any_model_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="no model could be loaded"):
        make_core(tmp_path)


def test_foreign_model_with_sidecar_metadata(tmp_path):
    make_repo(tmp_path, name="foreign", version=3, with_metadata=False)
    sidecar = {
        "labels": ["rouge", "vert", "bleu"],
        "input_size": TINY_SIZE,
        "resize_size": TINY_SIZE,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
        "dataset": "colours",
    }
    (tmp_path / "foreign" / "3" / "config.json").write_text(json.dumps(sidecar))
    core = make_core(tmp_path)
    model = core.models["foreign"]
    assert model.metadata.provenance == {"dataset": "colours"}
    result = classify(core, [ImageInput(encoded=solid(GREEN))], model="foreign")
    assert (result.version, result.results[0].top[0].label) == (3, "vert")


def test_model_config_sets_batching(tmp_path):
    make_repo(tmp_path)
    (tmp_path / "tiny" / "config.json").write_text(json.dumps({"max_batch_size": 3}))
    core = make_core(tmp_path)
    try:
        assert core.models["tiny"].max_batch_size == 3
        assert core.models["tiny"].batcher.max_batch_size == 3
    finally:
        asyncio.run(core.close())


def test_one_bad_model_config_does_not_stop_the_others(tmp_path):
    """Core.load_all: "A model that fails to load is logged and skipped; the rest serve."
    An invalid models/<name>/config.json is such a failure."""
    make_repo(tmp_path, name="good")
    make_repo(tmp_path, name="bad")
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"max_batch_sise": 4}))
    core = make_core(tmp_path)
    try:
        assert sorted(core.models) == ["good"]
    finally:
        asyncio.run(core.close())
