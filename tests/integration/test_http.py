"""The HTTP/REST port with real clients: tritonclient.http (binary and JSON), urllib, curl.

The same server process serves gRPC and HTTP; answers over both must agree.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from PIL import Image

from imgclf._generated.inference import model_config_pb2 as mc
from imgclf.client.bench.launcher import ServerProcess, start_server
from imgclf.imaging import Preprocessing, preprocess_image
from tests.conftest import require_executable, tool_missing
from tests.images import encode

MODEL = "efficientnet_lite0"
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
SPEC = Preprocessing(
    input_size=(224, 224), resize_size=256, interpolation="bicubic",
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
)  # fmt: skip


@pytest.fixture(scope="module")
def th() -> ModuleType:
    """tritonclient.http (its extra needs geventhttpclient)."""
    try:
        import tritonclient.http as module
    except Exception as exc:  # RuntimeError when the http extra is not installed
        tool_missing(f"tritonclient.http cannot be imported: {exc}")
    return module


@pytest.fixture(scope="module")
def client(th: ModuleType, bundled_server: ServerProcess) -> Iterator[Any]:
    c = th.InferenceServerClient(f"127.0.0.1:{bundled_server.http_port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_client(bundled_server: ServerProcess) -> Iterator[triton_grpc.InferenceServerClient]:
    c = triton_grpc.InferenceServerClient(bundled_server.target)
    yield c
    c.close()


@pytest.fixture(scope="module")
def chelsea_tensor(photos: dict[str, bytes]) -> np.ndarray:
    return preprocess_image(Image.open(io.BytesIO(photos["chelsea"])).convert("RGB"), SPEC)[None]


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def labels_of(classes: np.ndarray) -> list[str]:
    """Labels of "score:index:label" elements (bytes from binary data, str from JSON)."""
    return [(e.decode() if isinstance(e, bytes) else e).split(":", 2)[2] for e in classes.ravel()]


def test_health_metadata_and_extensions(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("no-such-model")
    server = client.get_server_metadata()
    assert server["name"] == "imgclf"
    assert {"classification", "model_repository", "statistics", "binary_tensor_data"} <= set(
        server["extensions"]
    )
    meta = client.get_model_metadata(MODEL)
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]


def test_config_is_the_grpc_config(
    client: Any, grpc_client: triton_grpc.InferenceServerClient
) -> None:
    """The same Triton-shaped ModelConfig over both ports (as JSON with numbers over HTTP)."""
    from google.protobuf import json_format

    over_http = client.get_model_config(MODEL)
    # the model's own max batch size (4 for this model on CPU: slow models batch by 4)
    assert over_http["max_batch_size"] == 4 and over_http["input"][0]["dims"] == [3, 224, 224]
    parsed = json_format.ParseDict(over_http, mc.ModelConfig())
    over_grpc = grpc_client.get_model_config(MODEL).config.SerializeToString(deterministic=True)
    assert parsed.SerializeToString(deterministic=True) == over_grpc


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_tensor_matches_grpc(
    th: ModuleType,
    client: Any,
    grpc_client: triton_grpc.InferenceServerClient,
    chelsea_tensor: np.ndarray,
    binary: bool,
) -> None:
    inp = th.InferInput("input", list(chelsea_tensor.shape), "FP32")
    inp.set_data_from_numpy(chelsea_tensor, binary_data=binary)
    outputs = [
        th.InferRequestedOutput("probabilities", binary_data=binary),
        th.InferRequestedOutput("logits", binary_data=binary, class_count=3),
    ]
    result = client.infer(MODEL, [inp], outputs=outputs, request_id="r1")
    response = result.get_response()
    assert response["id"] == "r1" and response["model_version"] == "1"
    binary_sizes = [o.get("parameters", {}).get("binary_data_size") for o in response["outputs"]]
    assert all(binary_sizes) if binary else not any(binary_sizes)
    probs = result.as_numpy("probabilities")
    assert probs.shape == (1, 1000) and abs(float(probs.sum()) - 1.0) < 1e-3
    assert labels_of(result.as_numpy("logits"))[0] in CAT_CLASSES

    g_inp = triton_grpc.InferInput("input", list(chelsea_tensor.shape), "FP32")
    g_inp.set_data_from_numpy(chelsea_tensor)
    over_grpc = grpc_client.infer(
        MODEL, [g_inp], outputs=[triton_grpc.InferRequestedOutput("probabilities")]
    )
    np.testing.assert_allclose(probs, over_grpc.as_numpy("probabilities"), rtol=1e-5, atol=1e-7)


def test_bytes_images_with_classification(
    th: ModuleType, client: Any, photos: dict[str, bytes]
) -> None:
    inp = th.InferInput("image", [2, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[photos["chelsea"]], [photos["coffee"]]], dtype=object))
    out = th.InferRequestedOutput("probabilities", class_count=2)
    classes = client.infer(MODEL, [inp], outputs=[out]).as_numpy("probabilities")
    assert classes.shape == (2, 2)
    assert labels_of(classes[0])[0] in CAT_CLASSES
    assert labels_of(classes[1])[0] in {"espresso", "cup", "coffee mug", "eggnog"}


def test_statistics_count_http_inferences(
    th: ModuleType, client: Any, chelsea_tensor: np.ndarray
) -> None:
    def count() -> int:
        (stats,) = client.get_inference_statistics(MODEL)["model_stats"]
        return int(stats["inference_count"])

    before = count()
    inp = th.InferInput("input", list(chelsea_tensor.shape), "FP32")
    inp.set_data_from_numpy(chelsea_tensor)
    client.infer(MODEL, [inp])
    assert count() == before + 1
    every = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in every} == {MODEL, "digits"}


def test_repository_index(client: Any) -> None:
    index = client.get_model_repository_index()
    assert {(m["name"], m["state"]) for m in index} == {(MODEL, "READY"), ("digits", "READY")}


def test_errors_are_json_with_the_matching_status(bundled_server: ServerProcess) -> None:
    base = bundled_server.http_url
    cases = [
        ("GET", "/v2/models/no-such-model", None, 404, "no-such-model"),
        ("GET", f"/v2/models/{MODEL}/versions/9", None, 404, "version 9"),
        ("GET", f"/v2/models/{MODEL}/versions/latest", None, 400, "must be an integer"),
        ("POST", f"/v2/models/{MODEL}/infer", b"{not json", 400, "not valid JSON"),
        ("POST", f"/v2/models/{MODEL}/infer",
         json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224],
                                 "data": [0.0] * 10}]}).encode(), 400, "needs 150528 values"),
        ("POST", "/v2/repository/models/digits/load", b"", 400, "explicit"),
        ("POST", "/v2/systemsharedmemory/region/r/register", b"{}", 501, "not supported"),
        ("GET", "/v2/no/such/route", None, 404, "Not Found"),
        ("DELETE", "/v2", None, 405, "Method Not Allowed"),
    ]  # fmt: skip
    for method, path, body, status, fragment in cases:
        code, headers, reply = http(method, base + path, body)
        assert code == status, (path, code, reply)
        assert headers["Content-Type"].startswith("application/json"), path
        assert fragment in json.loads(reply)["error"], (path, reply)
    # the server goes on serving
    assert http("GET", base + "/v2/health/ready")[0] == 200


def test_shared_memory_status_and_unregister_succeed(client: Any) -> None:
    """What perf_analyzer and tritonclient call at start answers without an error."""
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()
    assert client.get_system_shared_memory_status() == []
    assert client.get_cuda_shared_memory_status() == []


def test_shared_memory_over_grpc(grpc_client: triton_grpc.InferenceServerClient) -> None:
    from tritonclient.utils import InferenceServerException

    grpc_client.unregister_system_shared_memory()
    grpc_client.unregister_cuda_shared_memory()
    assert not grpc_client.get_system_shared_memory_status().regions
    assert not grpc_client.get_cuda_shared_memory_status().regions
    with pytest.raises(InferenceServerException) as info:
        grpc_client.register_system_shared_memory("r", "/imgclf-test", 64)
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "system shared memory is not supported" in info.value.message()


def test_unknown_request_parameters_are_ignored(
    grpc_client: triton_grpc.InferenceServerClient, chelsea_tensor: np.ndarray
) -> None:
    """As Triton: perf_analyzer's streaming mode sends triton_enable_empty_final_response."""
    inp = triton_grpc.InferInput("input", list(chelsea_tensor.shape), "FP32")
    inp.set_data_from_numpy(chelsea_tensor)
    result = grpc_client.infer(
        MODEL,
        [inp],
        parameters={"triton_enable_empty_final_response": True, "temperature": 2},
        outputs=[triton_grpc.InferRequestedOutput("probabilities", class_count=1)],
    )
    assert labels_of(result.as_numpy("probabilities"))[0] in CAT_CLASSES


# ---- the plain image endpoint -------------------------------------------------------------


def test_classify_endpoint_with_curl(bundled_server: ServerProcess, tmp_path: Path,
                                     photos: dict[str, bytes]) -> None:  # fmt: skip
    curl = require_executable("curl")
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(photos["chelsea"])
    (tmp_path / "coffee.jpg").write_bytes(photos["coffee"])
    url = f"{bundled_server.http_url}/v1/models/{MODEL}/classify"
    for args in (
        ["-T", str(photo), url],
        ["--data-binary", f"@{photo}", url + "?top_k=3"],
        ["-F", f"image=@{photo}", url + "?top_k=3"],
    ):
        reply = subprocess.run([curl, "-sS", "--fail-with-body", *args], capture_output=True,
                               timeout=60, check=True)  # fmt: skip
        doc = json.loads(reply.stdout)
        assert (doc["model"], doc["version"]) == (MODEL, 1)
        (result,) = doc["results"]
        predictions = result["predictions"]
        assert len(predictions) == (5 if args[0] == "-T" else 3)
        assert predictions[0]["label"] in CAT_CLASSES
        probabilities = [p["probability"] for p in predictions]
        assert probabilities == sorted(probabilities, reverse=True) and probabilities[0] > 0.2
    reply = subprocess.run(
        [curl, "-sS", "-F", f"a=@{photo}", "-F", f"b=@{tmp_path / 'coffee.jpg'}", url],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    doc = json.loads(reply.stdout)
    assert [r["image"] for r in doc["results"]] == ["chelsea.jpg", "coffee.jpg"]
    assert doc["results"][0]["predictions"][0]["label"] in CAT_CLASSES


def test_classify_endpoint_errors(bundled_server: ServerProcess) -> None:
    base = bundled_server.http_url
    code, _, reply = http("POST", f"{base}/v1/models/{MODEL}/classify", b"not an image")
    assert code == 400 and "not a decodable image" in json.loads(reply)["error"]
    code, _, reply = http("POST", f"{base}/v1/models/{MODEL}/classify?top_k=x", b"x")
    assert code == 400 and "top_k must be an integer" in json.loads(reply)["error"]
    code, _, reply = http("POST", f"{base}/v1/classify", b"x")  # two models, no default
    assert code == 404 and "name a model" in json.loads(reply)["error"]


def test_classify_default_model(tiny_server: ServerProcess) -> None:
    """One model served: /v1/classify uses it."""
    red = encode(Image.new("RGB", (20, 20), (220, 20, 30)), "PNG")
    code, _, reply = http("PUT", f"{tiny_server.http_url}/v1/classify?top_k=1", red)
    assert code == 200, reply
    doc = json.loads(reply)
    assert doc["model"] == "tiny" and doc["results"][0]["predictions"][0]["label"] == "red"


def test_load_and_unload_over_http(
    th: ModuleType, tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = start_server(
        tiny_repo, tmp_path_factory.mktemp("explicit-http"), "--model-control-mode", "explicit"
    )
    try:
        c = th.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        assert not c.is_model_ready("tiny")
        c.load_model("tiny")
        assert c.is_model_ready("tiny")
        assert [m["state"] for m in c.get_model_repository_index()] == ["READY"]
        c.unload_model("tiny")
        assert not c.is_model_ready("tiny")
        c.close()
    finally:
        server.stop()


def test_openapi_document_is_served(bundled_server: ServerProcess) -> None:
    code, _, reply = http("GET", f"{bundled_server.http_url}/openapi.json")
    doc = json.loads(reply)
    assert code == 200 and doc["openapi"].startswith("3.")
    assert "/v2/models/{model}/infer" in doc["paths"] and "/v1/classify" in doc["paths"]


def test_http_port_zero_picks_a_free_port_and_no_http_turns_it_off(
    tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = start_server(tiny_repo, tmp_path_factory.mktemp("port0"), "--http-port", "0")
    try:
        (port,) = {int(p) for p in re.findall(r"HTTP 127\.0\.0\.1:(\d+) ", server.log())}
        assert port not in (0, 8000)
        code, _, _ = http("GET", f"http://127.0.0.1:{port}/v2/health/ready")
        assert code == 200
    finally:
        server.stop()
    server = start_server(tiny_repo, tmp_path_factory.mktemp("nohttp"), "--no-http")
    try:
        assert server.http_port == 0 and "HTTP off" in server.log()
    finally:
        server.stop()
