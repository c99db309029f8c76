"""The real server on a tiny real model: API, health, bad input, metrics, batching."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from imgclf.client import Client
from imgclf.client.bench.launcher import ServerProcess, free_port
from tests.images import encode

RED = np.full((30, 40, 3), (220, 20, 30), dtype=np.uint8)
BLUE = np.full((50, 20, 3), (10, 30, 240), dtype=np.uint8)


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus-client's text parser."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_health_is_serving_after_warmup(tiny_server: ServerProcess) -> None:
    with grpc.insecure_channel(tiny_server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "imgclf.v1.ImageClassifier"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert "ready: serving tiny" in tiny_server.log()


def test_list_models_describes_the_model(tiny_server: ServerProcess) -> None:
    with Client(tiny_server.target) as client:
        (model,) = client.list_models().models
    assert model.name == "tiny"
    assert list(model.versions) == [1]
    assert list(model.labels) == ["red", "green", "blue"]
    assert list(model.input_shape) == [3, 16, 16]
    assert model.provider == "CPUExecutionProvider"
    assert model.metadata["architecture"] == "tiny-test"


def test_classify_encoded_images_of_several_formats(tiny_server: ServerProcess) -> None:
    images = [encode(RED, "PNG"), encode(BLUE, "JPEG"), encode(RED, "WEBP"), encode(BLUE, "BMP")]
    with Client(tiny_server.target) as client:
        reply = client.classify(images, top_k=2)
    assert (reply.model, reply.version) == ("tiny", 1)
    assert [r.top[0].label for r in reply.results] == ["red", "blue", "red", "blue"]
    for result in reply.results:
        assert len(result.top) == 2
        assert len(result.probabilities) == 3
        assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert result.top[0].probability == max(result.probabilities)


def test_classify_raw_tensor(tiny_server: ServerProcess) -> None:
    tensor = np.zeros((3, 16, 16), dtype=np.float32)
    tensor[1] = 1.0  # pure green in the model's normalised input space
    with Client(tiny_server.target) as client:
        reply = client.classify([tensor], model="tiny")
    assert reply.results[0].top[0].label == "green"


TRUNCATED_JPEG = encode(RED, "JPEG")[:200]


@pytest.mark.parametrize(
    ("images", "model", "code", "message"),
    [
        ([b"this is not an image"], "tiny", grpc.StatusCode.INVALID_ARGUMENT, "not a decodable"),
        ([TRUNCATED_JPEG], "tiny", grpc.StatusCode.INVALID_ARGUMENT, "could not be decoded"),
        ([b""], "tiny", grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        ([encode(RED, "PNG")], "no-such-model", grpc.StatusCode.NOT_FOUND, "not loaded"),
        (
            [np.zeros((3, 8, 8), dtype=np.float32)],
            "tiny",
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not match the model input",
        ),
        ([], "tiny", grpc.StatusCode.INVALID_ARGUMENT, "no image"),
    ],
    ids=["not-an-image", "truncated-jpeg", "empty", "unknown-model", "wrong-shape", "no-images"],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(
    tiny_server: ServerProcess, images: list, model: str, code: grpc.StatusCode, message: str
) -> None:
    with Client(tiny_server.target) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.classify(images, model=model)
        assert caught.value.code() == code
        assert message in caught.value.details()
        # The next good request is answered correctly.
        assert client.classify([encode(RED, "PNG")]).results[0].top[0].label == "red"
    assert tiny_server.proc.poll() is None


def test_metrics_parse_and_move_with_traffic(tiny_server: ServerProcess) -> None:
    ok = {"model": "tiny", "version": "1", "code": "OK"}
    bad = {"model": "tiny", "version": "1", "code": "INVALID_ARGUMENT"}
    before = scrape(tiny_server)
    with Client(tiny_server.target) as client:
        client.classify([encode(RED, "PNG"), encode(BLUE, "PNG")])
        with pytest.raises(grpc.RpcError):
            client.classify([b"junk"])
    after = scrape(tiny_server)
    assert (
        sample(after, "imgclf_requests_total", **ok)
        == sample(before, "imgclf_requests_total", **ok) + 1
    )
    assert (
        sample(after, "imgclf_requests_total", **bad)
        >= sample(before, "imgclf_requests_total", **bad) + 1
    )
    mv = {"model": "tiny", "version": "1"}
    assert (
        sample(after, "imgclf_images_total", **mv)
        >= sample(before, "imgclf_images_total", **mv) + 2
    )
    for hist in (
        "imgclf_request_duration_seconds",
        "imgclf_preprocess_duration_seconds",
        "imgclf_queue_duration_seconds",
        "imgclf_compute_input_duration_seconds",
        "imgclf_inference_duration_seconds",
        "imgclf_compute_output_duration_seconds",
        "imgclf_batch_size",
    ):
        assert sample(after, f"{hist}_count", **mv) > sample(before, f"{hist}_count", **mv), hist
    undecodable = {**mv, "reason": "undecodable_image"}
    assert (
        sample(after, "imgclf_request_failures_total", **undecodable)
        >= sample(before, "imgclf_request_failures_total", **undecodable) + 1
    )
    assert (
        sample(after, "imgclf_model_info", provider="CPUExecutionProvider", precision="fp32", **mv)
        == 1.0
    )
    assert sample(after, "imgclf_model_state", state="READY", **mv) == 1.0
    assert ("imgclf_queue_depth", tuple(sorted(mv.items()))) in after
    assert sample(after, "process_resident_memory_bytes") > 0


def test_concurrent_clients_are_batched(tiny_server: ServerProcess) -> None:
    mv = {"model": "tiny", "version": "1"}
    before = scrape(tiny_server)
    image = encode(RED, "PNG")

    def one_client(_: int) -> str:
        with Client(tiny_server.target) as client:
            return [client.classify([image]).results[0].top[0].label for _ in range(8)][-1]

    with ThreadPoolExecutor(16) as pool:
        labels = list(pool.map(one_client, range(16)))
    assert labels == ["red"] * 16
    after = scrape(tiny_server)
    batches = sample(after, "imgclf_batch_size_count", **mv) - sample(
        before, "imgclf_batch_size_count", **mv
    )
    images = sample(after, "imgclf_batch_size_sum", **mv) - sample(
        before, "imgclf_batch_size_sum", **mv
    )
    singles = sample(after, "imgclf_batch_size_bucket", le="1.0", **mv) - sample(
        before, "imgclf_batch_size_bucket", le="1.0", **mv
    )
    assert images == 16 * 8
    assert batches < images, "no batch held more than one image"
    assert batches - singles > 0, "the histogram shows no batch larger than 1"


def test_health_command_for_probes(tiny_server: ServerProcess) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "imgclf.cli", "health", "--server", tiny_server.target],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
    down = subprocess.run(
        [sys.executable, "-m", "imgclf.cli", "health", "--server", f"127.0.0.1:{free_port()}",
         "--timeout", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert down.returncode == 1 and "unhealthy" in down.stderr
