"""Class activation maps through every door of a real server: HTTP JSON and PNG, our gRPC
client, the Open Inference Protocol (tritonclient), and `imgclf classify --explain`.

The maps' meaning (they point at the object, they equal Grad-CAM) is proven on the library in
tests/unit/service/models/test_cam.py; here each door's maps must equal cam.class_maps computed
directly on the same input, so the plumbing (feature output, batching, box) is proven too.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from PIL import Image
from tritonclient.utils import InferenceServerException

from imgclf.client import Client, class_map_values
from imgclf.client.bench.launcher import ServerProcess, start_server
from imgclf.imaging import preprocess_bytes
from imgclf.modelmeta import ModelMetadata
from imgclf.models import cam
from tests.conftest import BUNDLED_MODELS, require_executable
from tests.integration.test_cli import imgclf
from tests.tiny_model import make_tiny_model

MODEL = "efficientnet_lite0"
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def explain_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled EfficientNet-Lite0, a tiny model without pooling (no maps) and a tiny
    model whose config turns maps off."""
    root = tmp_path_factory.mktemp("explain-repo")
    shutil.copytree(BUNDLED_MODELS / MODEL, root / MODEL)
    make_tiny_model(root / "flat" / "1" / "model.onnx", head="flatten")
    make_tiny_model(root / "off" / "1" / "model.onnx")
    (root / "off" / "config.json").write_text('{"explain": false}')
    return root


@pytest.fixture(scope="module")
def server(explain_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        explain_repo, tmp_path_factory.mktemp("explain-server"), "--instances", "1",
        "--max-explain-classes", "3",
    )  # fmt: skip
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def reference() -> tuple[cam.ActivationHead, Any, ModelMetadata]:
    """The bundled model's head, a session that returns its features, and its metadata."""
    model_bytes = (BUNDLED_MODELS / MODEL / "1" / "model.onnx").read_bytes()
    head = cam.find_head(model_bytes)
    session = cam.explaining_session(model_bytes, head)
    meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    return head, session, meta


def expected_maps(reference: Any, photo: bytes, classes: list[int]) -> np.ndarray:
    """cam.class_maps on the tensor the server computes for `photo`: [k, h, w]."""
    head, session, meta = reference
    tensor = preprocess_bytes(photo, meta.preprocessing)[None]
    _, features = session.run(None, {session.get_inputs()[0].name: tensor})
    return cam.class_maps(features, head.weight, np.asarray([classes]))[0]


def http(server: ServerProcess, path: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of a request to the server's HTTP port."""
    url = f"http://127.0.0.1:{server.http_port}{path}"
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def test_http_json_maps_equal_the_library_maps_on_the_same_input(
    server: ServerProcess, photos: dict[str, bytes], reference: Any
) -> None:
    status, _, body = http(server, f"/v1/models/{MODEL}/classify?explain=2", photos["chelsea"])
    assert status == 200, body
    (result,) = json.loads(body)["results"]
    assert (result["width"], result["height"]) == (451, 300)  # the photo's own size
    maps = result["maps"]
    assert [m["index"] for m in maps] == [p["index"] for p in result["predictions"][:2]]
    assert maps[0]["label"] in CAT_CLASSES
    assert maps[0]["probability"] == result["predictions"][0]["probability"]
    # 451x300 -> resize 256 (384x256) -> center crop 224 at (80, 16): in the photo's pixels
    left, top, right, bottom = maps[0]["box"]
    assert (left, top, right, bottom) == pytest.approx(
        (80 * 451 / 384, 18.75, 304 * 451 / 384, 281.25), abs=1e-3
    )
    got = np.asarray([m["map"] for m in maps], dtype=np.float32)
    assert got.shape == (2, 7, 7)
    want = expected_maps(reference, photos["chelsea"], [m["index"] for m in maps])
    np.testing.assert_allclose(got, want, atol=TOLERANCE)
    assert got.max() == pytest.approx(1.0) and got.min() >= 0.0


def test_http_named_classes_and_plain_requests(
    server: ServerProcess, photos: dict[str, bytes], reference: Any
) -> None:
    path = f"/v1/models/{MODEL}/classify?explain_class=504&explain_class=281"
    status, _, body = http(server, path, photos["coffee"])
    assert status == 200, body
    (result,) = json.loads(body)["results"]
    assert [m["index"] for m in result["maps"]] == [504, 281]
    got = np.asarray([m["map"] for m in result["maps"]], dtype=np.float32)
    np.testing.assert_allclose(
        got, expected_maps(reference, photos["coffee"], [504, 281]), atol=TOLERANCE
    )
    status, _, body = http(server, f"/v1/models/{MODEL}/classify", photos["coffee"])
    assert status == 200
    assert "maps" not in json.loads(body)["results"][0]


def test_http_png_overlay_has_the_photo_size(
    server: ServerProcess, photos: dict[str, bytes]
) -> None:
    status, kind, body = http(server, f"/v1/models/{MODEL}/classify?format=png", photos["chelsea"])
    assert status == 200, body
    assert kind == "image/png"
    img = Image.open(io.BytesIO(body))
    assert img.format == "PNG" and img.size == (451, 300)
    photo = np.asarray(Image.open(io.BytesIO(photos["chelsea"])).convert("RGB"), dtype=np.int16)
    drawn = np.abs(np.asarray(img.convert("RGB"), dtype=np.int16) - photo).sum(axis=2)
    assert drawn[:, :80].mean() < drawn[20:280, 100:350].mean()  # blended inside the crop box


def test_curl_gets_the_maps_and_the_overlay(
    server: ServerProcess, photos: dict[str, bytes], tmp_path: Path
) -> None:
    """The README's HTTP explain calls with curl itself: JSON maps, then the PNG overlay."""
    curl = require_executable("curl")
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(photos["chelsea"])
    url = f"http://127.0.0.1:{server.http_port}/v1/models/{MODEL}/classify"
    reply = subprocess.run(
        [curl, "-sS", "--fail-with-body", "-T", str(photo), url + "?top_k=3&explain=2"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    (result,) = json.loads(reply.stdout)["results"]
    assert (result["width"], result["height"]) == (451, 300)
    maps = result["maps"]
    assert [m["index"] for m in maps] == [p["index"] for p in result["predictions"][:2]]
    assert maps[0]["label"] in CAT_CLASSES
    values = np.asarray(maps[0]["map"])
    assert values.shape == (7, 7) and values.max() == pytest.approx(1.0) and values.min() >= 0
    out = tmp_path / "chelsea.cam.png"
    subprocess.run(
        [curl, "-sS", "--fail-with-body", "-T", str(photo), "-o", str(out),
         url + "?explain=1&format=png"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    with Image.open(out) as img:
        assert (img.format, img.size) == ("PNG", (451, 300))


def test_http_png_of_a_large_photo_is_drawn_at_most_1600_pixels_on_its_side(
    server: ServerProcess, photos: dict[str, bytes]
) -> None:
    """A 4510x3000 photo (chelsea upscaled, JPEG): the overlay keeps its proportions at
    1600x1064, and the map lands where it does on the small photo (the box scaled with it)."""
    big = Image.open(io.BytesIO(photos["chelsea"])).convert("RGB").resize((4510, 3000))
    data = io.BytesIO()
    big.save(data, format="JPEG", quality=90)
    status, kind, body = http(server, f"/v1/models/{MODEL}/classify?format=png", data.getvalue())
    assert status == 200 and kind == "image/png", body
    img = Image.open(io.BytesIO(body))
    assert img.size == (1600, 1064)
    drawn = np.asarray(img.convert("RGB"), dtype=np.int16)
    plain = np.asarray(big.resize(img.size, Image.Resampling.BILINEAR), dtype=np.int16)
    change = np.abs(drawn - plain).sum(axis=2)
    assert change[150:, :250].mean() < change[150:950, 350:1250].mean()  # inside the box


def test_http_models_say_which_explain(server: ServerProcess) -> None:
    status, _, body = http(server, "/v1/models")
    assert status == 200
    models = {m["name"]: m for m in json.loads(body)["models"]}
    assert models[MODEL]["explain"] is True and models[MODEL]["labels_count"] == 1000
    assert models["flat"]["explain"] is False and models["off"]["explain"] is False


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/v1/models/flat/classify?explain=1", 400, "the layer before the linear one is Identity"),
        ("/v1/models/off/classify?explain=1", 400, "turned off"),
        (f"/v1/models/{MODEL}/classify?explain=4", 400, "between 1 and 3"),
        (f"/v1/models/{MODEL}/classify?explain_class=1000", 400, "classes 0 to 999"),
        (f"/v1/models/{MODEL}/classify?explain=x", 400, "explain must be an integer"),
    ],
)
def test_http_explain_refusals(
    server: ServerProcess, photos: dict[str, bytes], path: str, status: int, words: str
) -> None:
    got, _, body = http(server, path, photos["coffee"])
    assert got == status
    assert words in json.loads(body)["error"]
    ok, _, _ = http(server, f"/v1/models/{MODEL}/classify", photos["coffee"])
    assert ok == 200  # and the server keeps serving


def test_grpc_client_maps_equal_the_library_maps(
    server: ServerProcess, photos: dict[str, bytes], reference: Any
) -> None:
    with Client(server.target) as client:
        reply = client.classify([photos["chelsea"], photos["coffee"]], model=MODEL, explain=2)
        named = client.classify([photos["coffee"]], model=MODEL, explain=[504, 967])
        plain = client.classify([photos["coffee"]], model=MODEL)
        (info,) = [m for m in client.list_models().models if m.name == MODEL]
        flat = next(m for m in client.list_models().models if m.name == "flat")
    assert info.explain and not flat.explain
    for result, name in zip(reply.results, ("chelsea", "coffee"), strict=True):
        assert len(result.maps) == 2
        assert [m.index for m in result.maps] == [s.index for s in result.top[:2]]
        got = np.stack([class_map_values(m) for m in result.maps])
        np.testing.assert_allclose(
            got, expected_maps(reference, photos[name], [m.index for m in result.maps]),
            atol=TOLERANCE,
        )  # fmt: skip
    assert (reply.results[0].width, reply.results[0].height) == (451, 300)
    assert reply.results[0].top[0].label in CAT_CLASSES
    assert reply.results[1].maps[0].label in ("espresso", "cup", "coffee mug")
    assert [m.index for m in named.results[0].maps] == [504, 967]
    assert not plain.results[0].maps and plain.results[0].width == 0


def test_grpc_tensor_input_box_is_the_model_input(
    server: ServerProcess, photos: dict[str, bytes], reference: Any
) -> None:
    _, _, meta = reference
    tensor = preprocess_bytes(photos["chelsea"], meta.preprocessing)
    with Client(server.target) as client:
        reply = client.classify([tensor], model=MODEL, explain=1)
    (result,) = reply.results
    assert (result.width, result.height) == (224, 224)
    assert list(result.maps[0].box) == [0, 0, 224, 224]
    want = expected_maps(reference, photos["chelsea"], [result.maps[0].index])
    np.testing.assert_allclose(class_map_values(result.maps[0])[None], want, atol=TOLERANCE)


@pytest.mark.parametrize(
    ("model", "explain", "code", "words"),
    [
        ("flat", 1, grpc.StatusCode.FAILED_PRECONDITION, "head is not global pooling"),
        ("off", 1, grpc.StatusCode.FAILED_PRECONDITION, "turned off"),
        (MODEL, 4, grpc.StatusCode.INVALID_ARGUMENT, "between 1 and 3"),
        (MODEL, [-1], grpc.StatusCode.INVALID_ARGUMENT, "classes 0 to 999"),
    ],
)
def test_grpc_explain_refusals(
    server: ServerProcess, photos: dict[str, bytes], model: str, explain: Any, code: Any, words: str
) -> None:
    with Client(server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.classify([photos["coffee"]], model=model, explain=explain)
        assert err.value.code() == code
        assert words in err.value.details()
        assert client.classify([photos["coffee"]], model=MODEL).results[0].top


def test_open_inference_cam_output(
    server: ServerProcess, photos: dict[str, bytes], reference: Any
) -> None:
    client = triton_grpc.InferenceServerClient(server.target)
    try:
        meta = client.get_model_metadata(MODEL)
        assert {"cam", "cam_index", "cam_box"} <= {o.name for o in meta.outputs}
        assert "cam" not in {o.name for o in client.get_model_metadata("flat").outputs}
        images = np.array([[photos["chelsea"]], [photos["coffee"]]], dtype=np.object_)
        inp = triton_grpc.InferInput("image", [2, 1], "BYTES")
        inp.set_data_from_numpy(images)
        cam_out = triton_grpc.InferRequestedOutput("cam")
        cam_out._output.parameters["classes"].int64_param = 2
        probs = triton_grpc.InferRequestedOutput("probabilities")
        result = client.infer(MODEL, [inp], outputs=[probs, cam_out])
        maps, index, box = (result.as_numpy(n) for n in ("cam", "cam_index", "cam_box"))
        assert maps.shape == (2, 2, 7, 7) and index.shape == (2, 2) and box.shape == (2, 4)
        top2 = np.argsort(-result.as_numpy("probabilities"), axis=1, kind="stable")[:, :2]
        np.testing.assert_array_equal(index, top2)
        for n, name in enumerate(("chelsea", "coffee")):
            want = expected_maps(reference, photos[name], list(index[n]))
            np.testing.assert_allclose(maps[n], want, atol=TOLERANCE)
        np.testing.assert_allclose(box[0], (80 * 451 / 384, 18.75, 304 * 451 / 384, 281.25))
        plain = client.infer(MODEL, [inp], outputs=[probs])
        assert plain.as_numpy("cam") is None
        with pytest.raises(InferenceServerException) as err:
            tiny = triton_grpc.InferInput("input", [1, 3, 16, 16], "FP32")
            tiny.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
            client.infer("flat", [tiny], outputs=[triton_grpc.InferRequestedOutput("cam")])
        assert "FAILED_PRECONDITION" in str(err.value.status())
    finally:
        client.close()


def test_metrics_count_explained_images(server: ServerProcess, photos: dict[str, bytes]) -> None:
    def explained() -> float:
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as reply:
            text = reply.read().decode()
        for line in text.splitlines():
            if line.startswith("imgclf_explained_images_total{") and f'model="{MODEL}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = explained()
    http(server, f"/v1/models/{MODEL}/classify?explain=1", photos["coffee"])
    http(server, f"/v1/models/{MODEL}/classify", photos["coffee"])
    assert explained() == before + 1


def test_cli_classify_explain_writes_the_overlay(
    server: ServerProcess, photos: dict[str, bytes], tmp_path: Path
) -> None:
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(photos["chelsea"])
    out = tmp_path / "out"
    proc = imgclf("classify", "--server", server.target, "--model", MODEL, "--explain", str(out),
                  "--explain-top", "2", str(photo))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    written = out / "chelsea.cam.png"
    assert f"map: {written}" in proc.stdout
    img = Image.open(written)
    assert img.format == "PNG" and img.size == (2 * 451, 300)  # a panel per class
    panels = np.asarray(img.convert("RGB"), dtype=np.int16)
    assert np.abs(panels[:, :451] - panels[:, 451:]).mean() > 1  # two different maps
    refused = imgclf("classify", "--server", server.target, "--model", "flat", "--explain",
                     str(out), str(photo))  # fmt: skip
    assert refused.returncode == 1
    assert "FAILED_PRECONDITION" in refused.stderr or "head is not" in refused.stderr


@pytest.mark.parametrize("binary", [True, False])
def test_open_inference_cam_over_http(
    server: ServerProcess, photos: dict[str, bytes], reference: Any, binary: bool
) -> None:
    th = pytest.importorskip("tritonclient.http")
    client = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        inp = th.InferInput("image", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[photos["chelsea"]]], dtype=np.object_))
        cam_out = th.InferRequestedOutput("cam", binary_data=binary)
        cam_out._parameters["classes"] = 3  # no public setter for output parameters
        result = client.infer(MODEL, [inp], outputs=[cam_out])
        maps, index = result.as_numpy("cam"), result.as_numpy("cam_index")
        assert maps.shape == (1, 3, 7, 7) and index.dtype == np.int32
        want = expected_maps(reference, photos["chelsea"], list(index[0]))
        np.testing.assert_allclose(maps[0], want, atol=TOLERANCE)
        assert result.as_numpy("cam_box").shape == (1, 4)
    finally:
        client.close()
