"""imgclf.dataplane: the data plane over a real tiny ONNX model (ONNX Runtime on CPU), its models
loaded by a real ModelManager inside the running loop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from imgclf.dataplane import Core, ImageInput, deadline_passed, top_k
from imgclf.errors import DeadlineExceeded, InvalidInput, ModelNotFound, ModelNotReady
from imgclf.imaging import normalize
from imgclf.models.loader import softmax
from imgclf.runtime.engine import Engine
from tests.images import encode
from tests.tiny_model import LABELS
from tests.unit.service.support import (
    HANG,
    TINY_SIZE,
    add_version,
    let_run,
    make_core,
    make_repo,
    serving,
    solid,
    submit_until_closed,
)

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


def failures(core: Core, reason: str, model: str = "tiny", version: str = "1") -> float:
    value = core.metrics.registry.get_sample_value(
        "imgclf_request_failures_total", {"model": model, "version": version, "reason": reason}
    )
    return value or 0.0


def write_config(repo: Path, name: str, config: dict) -> None:
    (repo / name / "config.json").write_text(json.dumps(config))


@pytest.fixture
def core(tiny_repo: Path) -> Core:
    """A core over the tiny model; `serving` loads it and marks the core started."""
    return make_core(tiny_repo)


class Gate:
    """Holds every ONNX Runtime run (Engine.run) while closed; open at first (warm-up runs)."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.opened.set()
        self.entered = threading.Event()

    def close(self) -> None:
        self.entered.clear()
        self.opened.clear()

    def open(self) -> None:
        self.opened.set()

    async def wait_entered(self) -> None:
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, self.entered.wait, HANG), "no run started"


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    g = Gate()
    real = Engine.run

    def gated_run(self: Engine, batch: np.ndarray) -> np.ndarray:
        g.entered.set()
        assert g.opened.wait(HANG), "test never opened the gate"
        return real(self, batch)

    monkeypatch.setattr(Engine, "run", gated_run)
    yield g
    g.open()  # never leave a worker thread blocked


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


@pytest.mark.parametrize("seed", range(20))
def test_top_k_helper_matches_a_full_stable_sort(seed):
    """Partial selection gives the same classes in the same order as sorting all of them,
    ties at the k-th place included (values drawn from a few levels so ties abound)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    p = rng.integers(0, 5, size=n).astype(np.float32) / 4
    if seed % 5 == 0:
        p[rng.integers(0, n)] = np.nan
    labels = [str(i) for i in range(n)]
    for k in (1, 2, 3, n // 2 + 1, n, n + 3):
        want = np.argsort(-p, kind="stable")[: min(k, n)]
        got = [s.index for s in top_k(p, k, labels)]
        assert got == want.tolist(), (k, p)


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
            assert not core.ready
            with pytest.raises(ModelNotReady):
                await core.classify("tiny", [ImageInput(tensor=channel_tensor(0))])
            await core.manager.start()  # models loaded, but the core is not marked started
            assert core.manager.all_ready()
            assert not core.ready
            with pytest.raises(ModelNotReady):
                await core.classify("tiny", [ImageInput(tensor=channel_tensor(0))])
            core.mark_started()
            assert core.ready
            await core.classify("tiny", [ImageInput(tensor=channel_tensor(0))])
        finally:
            await core.close()

    asyncio.run(main())
    assert requests(core, "UNAVAILABLE", model="", version="") == 2
    assert requests(core, "OK") == 1


def test_not_ready_after_close(core):
    async def main():
        async with serving(core):
            pass
        assert not core.ready
        with pytest.raises(ModelNotReady):
            await core.classify("tiny", [ImageInput(tensor=channel_tensor(0))])

    asyncio.run(main())


def test_not_ready_while_draining_but_still_serving(core):
    """Draining turns readiness off so load balancers stop routing here; requests that still
    arrive are served (the transport refuses new calls later, then the core closes)."""

    async def main():
        async with serving(core):
            assert core.ready
            await core.classify("tiny", [ImageInput(tensor=channel_tensor(0))])
            core.begin_drain()
            assert not core.ready
            result = await core.classify("tiny", [ImageInput(tensor=channel_tensor(1))])
            assert result.results[0].top[0].label == "green"
        with pytest.raises(ModelNotReady):
            await core.classify("tiny", [ImageInput(tensor=channel_tensor(0))])

    asyncio.run(main())
    assert requests(core, "OK") == 2


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
    info = {
        "model": "tiny",
        "version": "1",
        "provider": "CPUExecutionProvider",
        "precision": "fp32",
    }

    async def main():
        async with serving(core):
            assert r.get_sample_value("imgclf_model_info", info) == 1
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
    assert r.get_sample_value("imgclf_request_failures_total", {**mv, "reason": "no_image"}) == 1
    assert r.get_sample_value("imgclf_model_info", info) is None  # closed: no longer loaded


# --- loading --------------------------------------------------------------------------------


def loaded_names(core: Core) -> list[str]:
    async def main():
        async with serving(core):
            return core.manager.names()

    return asyncio.run(main())


def test_start_skips_what_is_not_a_model(tmp_path):
    make_repo(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")
    (tmp_path / "README.md").write_text("not a model")
    core = make_core(tmp_path)
    assert loaded_names(core) == ["tiny"]
    assert core.manager.status["broken"][1].state == "FAILED"


def test_start_without_any_model_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="no model could be loaded"):
        loaded_names(make_core(tmp_path))


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

    async def main():
        async with serving(core):
            model = core.manager.get("foreign")
            assert model.metadata.provenance == {"dataset": "colours"}
            return await core.classify("foreign", [ImageInput(encoded=solid(GREEN))])

    result = asyncio.run(main())
    assert (result.version, result.results[0].top[0].label) == (3, "vert")


def test_model_config_sets_batching(tmp_path):
    make_repo(tmp_path)
    write_config(tmp_path, "tiny", {"max_batch_size": 3})
    core = make_core(tmp_path)

    async def main():
        async with serving(core):
            model = core.manager.get("tiny")
            return model.max_batch_size, model.batcher.max_batch_size

    assert asyncio.run(main()) == (3, 3)


def test_one_bad_model_config_does_not_stop_the_others(tmp_path):
    """A model that fails to load is logged and skipped; the rest serve. An invalid
    models/<name>/config.json is such a failure."""
    make_repo(tmp_path, name="good")
    make_repo(tmp_path, name="bad")
    write_config(tmp_path, "bad", {"max_batch_sise": 4})
    core = make_core(tmp_path)

    async def main():
        async with serving(core):
            assert core.manager.names() == ["good"]
            assert not core.ready  # "bad" should serve and does not
            result = await core.classify("good", [ImageInput(tensor=channel_tensor(2))])
            assert result.results[0].top[0].label == "blue"
            with pytest.raises(ModelNotReady):
                await core.classify("bad", [ImageInput(tensor=channel_tensor(2))])

    asyncio.run(main())


def test_versions_are_routed(tmp_path):
    make_repo(tmp_path, version=1)
    make_repo(tmp_path, version=2, labels=["r", "g", "b"])
    write_config(tmp_path, "tiny", {"version_policy": {"latest": 2}})
    core = make_core(tmp_path)
    images = [ImageInput(tensor=channel_tensor(0))]

    async def main():
        async with serving(core):
            return (
                await core.classify("tiny", images),
                await core.classify("tiny", images, version=1),
            )

    newest, old = asyncio.run(main())
    assert (newest.version, newest.results[0].top[0].label) == (2, "r")
    assert (old.version, old.results[0].top[0].label) == (1, "red")


def test_a_request_in_flight_finishes_on_the_version_it_started_on(tmp_path, gate):
    make_repo(tmp_path, version=1)
    core = make_core(tmp_path, model_control_mode="explicit", warmup=False)
    images = [ImageInput(tensor=channel_tensor(0))]

    async def main():
        async with serving(core):
            old = core.manager.get("tiny")
            gate.close()
            in_flight = asyncio.ensure_future(core.classify("tiny", images))
            await gate.wait_entered()
            add_version(tmp_path, "tiny", 2, labels=["r", "g", "b"])
            await core.manager.load("tiny")  # version 2 replaces version 1
            assert core.manager.get("tiny").version == 2
            gate.open()
            done = await asyncio.wait_for(in_flight, HANG)
            assert (done.version, done.results[0].top[0].label) == (1, "red")
            new = await asyncio.wait_for(core.classify("tiny", images), HANG)
            assert (new.version, new.results[0].top[0].label) == (2, "r")
            with pytest.raises(ModelNotReady):  # version 1 closes once its request is done
                await asyncio.wait_for(submit_until_closed(old, channel_tensor(0)), HANG)

    asyncio.run(main())


# --- infer and input forms ------------------------------------------------------------------


def test_infer_returns_raw_outputs_and_probabilities(core):
    img = np.zeros((3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    img[0], img[1], img[2] = 0.5, 0.25, 0.125

    async def main():
        async with serving(core):
            return await core.infer("tiny", [ImageInput(tensor=img), ImageInput(tensor=img * 2)])

    result = asyncio.run(main())
    logits = np.array([[2.0, 1.0, 0.5], [4.0, 2.0, 1.0]], dtype=np.float32)  # 4 x channel mean
    assert (result.model.name, result.model.version) == ("tiny", 1)
    assert result.outputs.shape == (2, 3)
    assert result.outputs.dtype == np.float32
    np.testing.assert_allclose(result.outputs, logits, atol=1e-5)
    np.testing.assert_allclose(result.probabilities, softmax(logits), atol=1e-6)
    assert requests(core, "OK") == 1


def test_uint8_pixels_are_normalised_by_the_server(tmp_path):
    """The same image as uint8 CHW pixels (normalised by the server with the model's
    mean/std), as a float tensor normalised by the client, and as a lossless PNG of the model's
    input size all give the same outputs."""
    make_repo(tmp_path)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    (tmp_path / "tiny" / "1" / "config.json").write_text(json.dumps({"mean": mean, "std": std}))
    core = make_core(tmp_path)
    hwc = np.random.default_rng(7).integers(0, 256, (TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    pixels = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    by_hand = (pixels.astype(np.float32) / 255 - np.array(mean, np.float32)[:, None, None]) / (
        np.array(std, np.float32)[:, None, None]
    )

    async def main():
        async with serving(core):
            spec = core.manager.get("tiny").metadata.preprocessing
            tensor = normalize(hwc, spec)
            np.testing.assert_allclose(tensor, by_hand, atol=1e-5)
            images = [
                ImageInput(pixels=pixels),
                ImageInput(tensor=tensor),
                ImageInput(encoded=encode(hwc, "PNG")),
            ]
            return await core.infer("tiny", images)

    out = asyncio.run(main()).outputs
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)
    np.testing.assert_allclose(out[0], out[2], atol=1e-5)
    # Not trivially equal: the mean/std really shift the logits away from the raw /255 ones.
    raw = 4 * (pixels.astype(np.float32) / 255).mean(axis=(1, 2))
    assert not np.allclose(out[0], raw, atol=1e-2)


def test_pixels_of_the_wrong_shape(core):
    pixels = np.zeros((TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)  # HWC, not CHW
    err = fails(core, [ImageInput(pixels=pixels)], InvalidInput)
    assert str(err).startswith("image 0: tensor shape")
    assert failures(core, "bad_shape") == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_tensor_refused_and_counted(core, bad):
    img = channel_tensor(0)
    img[1, 3, 4] = bad
    images = [ImageInput(tensor=channel_tensor(1)), ImageInput(tensor=img)]
    err = fails(core, images, InvalidInput)
    assert err.reason == "non_finite"
    assert "image 1: tensor holds NaN or infinite values" in str(err)
    assert failures(core, "non_finite") == 1
    assert requests(core, "INVALID_ARGUMENT") == 1
    assert requests(core, "OK") == 0


# --- priorities and timeouts ----------------------------------------------------------------


def test_priority_beyond_the_levels_is_invalid(core):
    err = fails(core, [ImageInput(tensor=channel_tensor(0))], InvalidInput, priority=2)
    assert err.reason == "bad_priority"
    assert "priority must be 0..1" in str(err)
    assert failures(core, "bad_priority") == 1


def test_priority_levels_from_the_model_config(tmp_path):
    make_repo(tmp_path)
    write_config(tmp_path, "tiny", {"priority_levels": 3, "default_priority_level": 2})
    images = [ImageInput(tensor=channel_tensor(0))]
    for priority in (0, 1, 3):
        result = classify(make_core(tmp_path), images, priority=priority)
        assert result.results[0].top[0].label == "red"
    err = fails(make_core(tmp_path), images, InvalidInput, priority=4)
    assert err.reason == "bad_priority"
    fails(make_core(tmp_path), images, InvalidInput, priority=-1)


def test_default_timeout_from_the_model_config(tmp_path, gate):
    """default_timeout_ms 50: a request queued behind a held run is dropped with
    DeadlineExceeded instead of being run late; the request already running finishes."""
    make_repo(tmp_path)
    write_config(tmp_path, "tiny", {"default_timeout_ms": 50})
    core = make_core(tmp_path)
    images = [ImageInput(tensor=channel_tensor(2))]

    async def main():
        async with serving(core):
            gate.close()
            # An explicit deadline wins over the default: this one cannot expire here.
            running = asyncio.ensure_future(
                core.classify("tiny", images, deadline=time.monotonic() + 60)
            )
            await gate.wait_entered()
            queued = asyncio.ensure_future(core.classify("tiny", images))  # default: 50 ms
            await asyncio.sleep(0.15)  # well past its 50 ms
            gate.open()
            done = await asyncio.wait_for(running, HANG)
            assert done.results[0].top[0].label == "blue"
            with pytest.raises(DeadlineExceeded):
                await asyncio.wait_for(queued, HANG)

    asyncio.run(main())
    assert requests(core, "OK") == 1
    assert requests(core, "DEADLINE_EXCEEDED") == 1
    assert failures(core, "deadline_exceeded") == 1


def test_expired_request_counted_once_when_batched_with_a_live_one(tiny_repo, gate):
    """imgclf_request_failures_total counts failed *requests*: a request whose deadline
    passed in the queue is one failure, whether or not its batch also held live items."""
    core = make_core(tiny_repo)
    images = [ImageInput(tensor=channel_tensor(0))]

    async def main():
        async with serving(core):
            gate.close()
            running = asyncio.ensure_future(core.classify("tiny", images))
            await gate.wait_entered()
            expiring = asyncio.ensure_future(
                core.classify("tiny", images, deadline=time.monotonic() + 0.05)
            )
            live = asyncio.ensure_future(core.classify("tiny", images))
            await let_run()
            await asyncio.sleep(0.15)
            gate.open()  # the next batch holds both `expiring` (expired) and `live`
            await asyncio.wait_for(asyncio.gather(running, live), HANG)
            with pytest.raises(DeadlineExceeded):
                await asyncio.wait_for(expiring, HANG)
            assert core.manager.get("tiny").batcher.depth == 0

    asyncio.run(main())
    assert requests(core, "OK") == 2
    assert requests(core, "DEADLINE_EXCEEDED") == 1
    assert failures(core, "deadline_exceeded") == 1


def test_deadline_passed_allows_for_the_deadline_the_client_started_earlier():
    # A 0.5 s call: reset within its last fifth is the deadline (the client started its
    # clock before the request reached us); earlier, the client's own cancel.
    assert deadline_passed(10.5, 10.0, 10.5)
    assert deadline_passed(10.5, 10.0, 10.45)
    assert not deadline_passed(10.5, 10.0, 10.3)
    assert not deadline_passed(None, 10.0, 99.0)


def test_a_call_reset_at_its_deadline_counts_as_deadline_exceeded(tiny_repo, gate):
    """The client saw DEADLINE_EXCEEDED: the server counts that, not CANCELLED (the reset
    arrives a little before our own copy of the deadline)."""
    core = make_core(tiny_repo)
    images = [ImageInput(tensor=channel_tensor(0))]

    async def main():
        async with serving(core):
            gate.close()
            running = asyncio.ensure_future(core.classify("tiny", images))
            await gate.wait_entered()
            near = asyncio.ensure_future(
                core.classify("tiny", images, deadline=time.monotonic() + 0.3)
            )
            early = asyncio.ensure_future(
                core.classify("tiny", images, deadline=time.monotonic() + 60)
            )
            await asyncio.sleep(0.27)  # reset 30 ms before our deadline, as gRPC does
            near.cancel()
            early.cancel()
            await let_run()
            gate.open()
            await asyncio.wait_for(running, HANG)
            for task in (near, early):
                with pytest.raises(asyncio.CancelledError):
                    await task

    asyncio.run(main())
    assert requests(core, "DEADLINE_EXCEEDED") == 1
    assert requests(core, "CANCELLED") == 1


# --- statistics -----------------------------------------------------------------------------


def test_model_statistics_follow_requests(core):
    async def main():
        async with serving(core):
            await core.classify("tiny", [ImageInput(tensor=channel_tensor(0))] * 3)
            with pytest.raises(InvalidInput):
                await core.classify("tiny", [ImageInput(tensor=np.zeros((1,), np.float32))])
            return core.manager.get("tiny").stats

    stats = asyncio.run(main())
    assert stats.inference_count == 3
    assert 1 <= stats.execution_count <= 3
    assert stats.queue.count == 3
    assert stats.compute_output.count == 1  # once per successful request
    assert (stats.success.count, stats.fail.count) == (1, 1)


# --- models that take pixels (normalisation in the graph) -----------------------------------


def test_a_pixel_input_model_answers_as_its_float_twin(tmp_path):
    """The uint8 NHWC model (scaling in its graph) and the float NCHW model (scaled by the
    server) give the same outputs for the same PNG and for the same pixels in each model's own
    layout; the pixel model refuses float tensors, whose normalisation it would repeat."""
    make_repo(tmp_path, name="float")
    make_repo(tmp_path, name="pixels", pixel_input=True)
    core = make_core(tmp_path)
    hwc = np.random.default_rng(3).integers(0, 256, (TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    png = encode(hwc, "PNG")

    async def main():
        async with serving(core):
            pixel_model = core.manager.get("pixels")
            assert pixel_model.sample_shape == (TINY_SIZE, TINY_SIZE, 3)
            assert pixel_model.engine.info.input_type == "tensor(uint8)"
            a = await core.infer("float", [ImageInput(encoded=png)])
            b = await core.infer("pixels", [ImageInput(encoded=png)])
            c = await core.infer("pixels", [ImageInput(pixels=hwc)])
            d = await core.infer("float", [ImageInput(pixels=hwc.transpose(2, 0, 1))])
            with pytest.raises(InvalidInput, match="takes uint8 pixels") as refused:
                await core.infer(
                    "pixels",
                    [ImageInput(tensor=normalize(hwc, pixel_model.metadata.preprocessing))],
                )
            assert refused.value.reason == "bad_dtype"
            with pytest.raises(InvalidInput, match="does not match the model input"):
                await core.infer("pixels", [ImageInput(pixels=hwc.transpose(2, 0, 1).copy())])
            return a, b, c, d

    a, b, c, d = asyncio.run(main())
    for other in (b, c, d):
        np.testing.assert_allclose(other.outputs, a.outputs, atol=1e-5)


def test_layout_and_input_type_must_agree(tmp_path, caplog):
    """A uint8 model must declare NHWC pixels; a float model declaring NHWC is refused."""
    make_repo(tmp_path, name="tiny")
    (tmp_path / "tiny" / "1" / "config.json").write_text(json.dumps({"input_layout": "NHWC"}))
    core = make_core(tmp_path)

    async def main():
        async with serving(core):
            pass

    with pytest.raises(RuntimeError, match="no model could be loaded"):
        asyncio.run(main())
    assert "input tensor(float) with layout NHWC; a uint8 input takes NHWC pixels" in caplog.text
