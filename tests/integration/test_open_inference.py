"""tritonclient's gRPC client, unmodified, against the real server on the bundled models."""

from __future__ import annotations

import queue
from functools import partial

import numpy as np
import pytest
import tritonclient.grpc as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from imgclf.client import Client
from imgclf.client.bench.launcher import ServerProcess
from imgclf.imaging import Preprocessing, preprocess_image, resize_and_crop

MODEL = "efficientnet_lite0"
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
SPEC = Preprocessing(
    input_size=(224, 224), resize_size=256, interpolation="bicubic",
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
)  # fmt: skip


@pytest.fixture(scope="module")
def client(bundled_server: ServerProcess) -> triton.InferenceServerClient:
    c = triton.InferenceServerClient(bundled_server.target)
    yield c
    c.close()


@pytest.fixture(scope="module")
def photo_images(photos: dict[str, bytes]) -> dict[str, Image.Image]:
    import io

    return {name: Image.open(io.BytesIO(data)).convert("RGB") for name, data in photos.items()}


def top_labels(result: triton.InferResult, output: str) -> list[list[str]]:
    """Labels of the classification extension's "score:index:label" strings, per image."""
    rows = result.as_numpy(output)
    return [[e.decode().split(":", 2)[2] for e in row] for row in rows]


def test_server_and_model_readiness_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("no-such-model")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "imgclf"
    assert {"classification", "model_repository", "statistics"} <= set(server["extensions"])
    meta = client.get_model_metadata(MODEL, as_json=True)
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1"]
    (inp,) = meta["inputs"]
    assert inp["datatype"] == "FP32" and [int(d) for d in inp["shape"]] == [-1, 3, 224, 224]
    # the class activation map outputs are listed, and computed only when requested
    assert {o["name"] for o in meta["outputs"]} == {
        "logits",
        "probabilities",
        "cam",
        "cam_index",
        "cam_box",
    }


def test_model_config_is_triton_shaped(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config(MODEL).config
    assert config.name == MODEL
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size >= 1
    (inp,) = config.input
    assert inp.format == inp.FORMAT_NCHW and list(inp.dims) == [3, 224, 224]
    assert all(list(o.dims) == [1000] for o in config.output)
    assert config.HasField("dynamic_batching")
    assert config.instance_group[0].count >= 1
    assert config.optimization.cuda.graphs is False  # CPU here: no CUDA graphs


def test_batches_beyond_the_advertised_max_batch_size_are_refused(
    client: triton.InferenceServerClient, bundled_server: ServerProcess
) -> None:
    # ModelConfig advertises the model's own max batch size (what ListModels reports), not
    # --max-images-per-request (64); a batch up to it is served, one above it refused.
    with Client(bundled_server.target) as ours:
        (info,) = [m for m in ours.list_models().models if m.name == MODEL]
    advertised = client.get_model_config(MODEL).config.max_batch_size
    assert advertised == info.max_batch_size < 64
    for batch in (advertised + 1, 16):
        inp = triton.InferInput("input", [batch, 3, 224, 224], "FP32")
        inp.set_data_from_numpy(np.zeros((batch, 3, 224, 224), np.float32))
        with pytest.raises(InferenceServerException) as refused:
            client.infer(MODEL, [inp])
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT", batch
        assert f"max batch size of {advertised}" in refused.value.message()
    # 64 images (38.5 MB) are over the default message limit (the memory budget / 64 =
    # 16 MiB): gRPC refuses the message before the service sees it.
    inp = triton.InferInput("input", [64, 3, 224, 224], "FP32")
    inp.set_data_from_numpy(np.zeros((64, 3, 224, 224), np.float32))
    with pytest.raises(InferenceServerException) as refused:
        client.infer(MODEL, [inp])
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    inp = triton.InferInput("input", [advertised, 3, 224, 224], "FP32")
    inp.set_data_from_numpy(np.zeros((advertised, 3, 224, 224), np.float32))
    assert client.infer(MODEL, [inp]).as_numpy("logits").shape == (advertised, 1000)


def test_infer_fp32_tensor_with_classification(
    client: triton.InferenceServerClient, photo_images: dict[str, Image.Image]
) -> None:
    batch = np.stack([preprocess_image(photo_images[n], SPEC) for n in ("chelsea", "coffee")])
    inp = triton.InferInput("input", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch)
    outputs = [
        triton.InferRequestedOutput("probabilities", class_count=5),
        triton.InferRequestedOutput("logits"),
    ]
    result = client.infer(MODEL, [inp], outputs=outputs)
    chelsea, coffee = top_labels(result, "probabilities")
    assert chelsea[0] in CAT_CLASSES
    assert {"espresso", "cup"} & set(coffee[:3])
    logits = result.as_numpy("logits")
    assert logits.shape == (2, 1000) and logits.dtype == np.float32
    assert int(np.argmax(logits[0])) == int(result.as_numpy("probabilities")[0][0].split(b":")[1])


def test_infer_uint8_pixels_matches_fp32(
    client: triton.InferenceServerClient, photo_images: dict[str, Image.Image]
) -> None:
    img = photo_images["chelsea"]
    pixels = np.asarray(resize_and_crop(img, SPEC), dtype=np.uint8).transpose(2, 0, 1)[None]
    u8 = triton.InferInput("input", list(pixels.shape), "UINT8")
    u8.set_data_from_numpy(np.ascontiguousarray(pixels))
    f32 = triton.InferInput("input", [1, 3, 224, 224], "FP32")
    f32.set_data_from_numpy(preprocess_image(img, SPEC)[None])
    out = [triton.InferRequestedOutput("probabilities")]
    from_u8 = client.infer(MODEL, [u8], outputs=out).as_numpy("probabilities")
    from_f32 = client.infer(MODEL, [f32], outputs=out).as_numpy("probabilities")
    np.testing.assert_allclose(from_u8, from_f32, atol=1e-5)


def test_infer_bytes_images_decoded_server_side(
    client: triton.InferenceServerClient, photos: dict[str, bytes]
) -> None:
    data = np.array([[photos["chelsea"]], [photos["coffee"]]], dtype=np.object_)
    inp = triton.InferInput("image", [2, 1], "BYTES")
    inp.set_data_from_numpy(data)
    result = client.infer(
        MODEL, [inp], outputs=[triton.InferRequestedOutput("probabilities", class_count=5)]
    )
    chelsea, coffee = top_labels(result, "probabilities")
    assert len(chelsea) == 5 and chelsea[0] in CAT_CLASSES
    assert {"espresso", "cup"} & set(coffee[:3])


def on_done(answers: queue.Queue, result: triton.InferResult, error: object) -> None:
    answers.put((result, error))


def test_async_infer(client: triton.InferenceServerClient, photos: dict[str, bytes]) -> None:
    done: queue.Queue = queue.Queue()
    inp = triton.InferInput("image", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[photos["chelsea"]]], dtype=np.object_))
    out = [triton.InferRequestedOutput("probabilities", class_count=3)]
    for _ in range(4):
        client.async_infer(MODEL, [inp], partial(on_done, done), outputs=out)
    for _ in range(4):
        result, error = done.get(timeout=60)
        assert error is None
        assert top_labels(result, "probabilities")[0][0] in CAT_CLASSES


def test_stream_infer_answers_each_request_and_reports_errors(
    bundled_server: ServerProcess, photos: dict[str, bytes]
) -> None:
    answers: queue.Queue = queue.Queue()
    client = triton.InferenceServerClient(bundled_server.target)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        good = triton.InferInput("image", [1, 1], "BYTES")
        good.set_data_from_numpy(np.array([[photos["coffee"]]], dtype=np.object_))
        bad = triton.InferInput("image", [1, 1], "BYTES")
        bad.set_data_from_numpy(np.array([[b"not an image"]], dtype=np.object_))
        out = [triton.InferRequestedOutput("probabilities", class_count=3)]
        for i in range(3):
            client.async_stream_infer(MODEL, [good], request_id=f"good-{i}", outputs=out)
        client.async_stream_infer(MODEL, [bad], request_id="bad", outputs=out)
        results = [answers.get(timeout=60) for _ in range(4)]
    finally:
        client.stop_stream()
        client.close()
    ok = [r for r, e in results if e is None]
    errors = [e for r, e in results if e is not None]
    assert sorted(r.get_response().id for r in ok) == ["good-0", "good-1", "good-2"]
    assert all({"espresso", "cup"} & set(top_labels(r, "probabilities")[0]) for r in ok)
    assert len(errors) == 1 and "not a decodable image" in str(errors[0])


def test_errors_map_to_status_codes(client: triton.InferenceServerClient) -> None:
    inp = triton.InferInput("input", [1, 3, 8, 8], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3, 8, 8), dtype=np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL, [inp])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as caught:
        client.infer("no-such-model", [inp])
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_statistics_count_inferences(client: triton.InferenceServerClient) -> None:
    stats = client.get_inference_statistics(MODEL).model_stats
    (mine,) = [s for s in stats if s.name == MODEL]
    assert mine.inference_count > 0 and mine.execution_count > 0
    assert mine.inference_stats.success.count > 0
    assert mine.inference_stats.compute_infer.ns > 0
    assert mine.batch_stats


def test_repository_index_lists_models(client: triton.InferenceServerClient) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    states = {(m["name"], m.get("version")): m.get("state") for m in index}
    assert states[(MODEL, "1")] == "READY"
    assert states[("digits", "1")] == "READY"
    with pytest.raises(InferenceServerException) as caught:
        client.load_model(MODEL)  # the bundled server runs in control mode none
    assert caught.value.status() == "StatusCode.FAILED_PRECONDITION"


def test_timeout_and_priority_parameters_are_honoured(tiny_server: ServerProcess) -> None:
    client = triton.InferenceServerClient(tiny_server.target)
    try:
        pixels = np.zeros((1, 3, 16, 16), dtype=np.float32)
        pixels[:, 2] = 1.0
        inp = triton.InferInput("input", [1, 3, 16, 16], "FP32")
        inp.set_data_from_numpy(pixels)
        # The tiny server waits 20 ms to fill a batch: a 1 µs queue timeout expires first.
        with pytest.raises(InferenceServerException) as caught:
            client.infer("tiny", [inp], timeout=1)
        assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        ok = client.infer("tiny", [inp], timeout=5_000_000, priority=1)
        assert int(np.argmax(ok.as_numpy("logits"))) == 2
        with pytest.raises(InferenceServerException) as caught:
            client.infer("tiny", [inp], priority=7)  # the model has one priority level
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        client.close()
