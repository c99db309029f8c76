"""Faults on a real server with real ONNX Runtime: bad model files at start-up and at reload,
an engine error in one batch, clients that cancel or disconnect, and a bounded overload.

The engine faults come from a real ONNX graph (the "trap" model), not a mock: it classifies like
tests/tiny_model.py, but a batch holding a value <= -2 makes its Gather index run out of range
(ONNX Runtime fails the run), and a batch whose largest value is v > 5 runs a Loop of
(v - 5) * scale 256x256 matrix products first (a slow batch, on demand). Warm-up (zeros) takes
neither path.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from benchmarks import overload as overload_bench
from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
from imgclf.client import Client, tensor_image
from imgclf.client.bench.launcher import ServerProcess, Target, free_port, start_server
from imgclf.client.channel import open_channel
from imgclf.modelmeta import ModelMetadata
from tests.images import encode
from tests.tiny_model import LABELS, make_tiny_model

SIZE = 16
WAIT_S = 30.0
GENERIC_INTERNAL = "internal error; see the server log"
RED_PNG = encode(Image.new("RGB", (20, 20), (220, 20, 30)), "PNG")


# --- models --------------------------------------------------------------------------------


def _save(model: onnx.ModelProto, path: Path, meta: ModelMetadata | None) -> Path:
    if meta is not None:
        helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def metadata(labels: list[str] = LABELS, std: float = 1.0) -> ModelMetadata:
    return ModelMetadata(
        labels=labels, input_size=(SIZE, SIZE), resize_size=SIZE,
        mean=(0.0, 0.0, 0.0), std=(std, std, std),
    )  # fmt: skip


def make_trap_model(path: Path, std: float = 1.0, scale: float = 100.0, dim: int = 256) -> Path:
    """tiny_model's classifier plus two traps (see the module docstring)."""
    k = len(LABELS)
    weight = np.zeros((3, k), dtype=np.float32)
    for i in range(k):
        weight[i % 3, i] = 4.0
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["s_in", "C"], ["product"]),
            helper.make_node("Tanh", ["product"], ["s_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "slow_body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [dim, dim]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [dim, dim]),
        ],
    )
    node = helper.make_node
    nodes = [
        node("GlobalAveragePool", ["input"], ["pooled"]),
        node("Flatten", ["pooled"], ["flat"], axis=1),
        node("Gemm", ["flat", "W", "B"], ["logits0"]),
        # fault: Gather(one element, index trunc(min(lowest value, 0))) is out of range <= -2
        node("ReduceMin", ["input"], ["lowest"], keepdims=0),
        node("Min", ["lowest", "zero"], ["lowest0"]),
        node("Cast", ["lowest0"], ["index"], to=TensorProto.INT64),
        node("Gather", ["one_element", "index"], ["gathered"], axis=0),
        # slow: Loop of trunc((highest - 5) * scale) matrix products when positive
        node("ReduceMax", ["input"], ["highest"], keepdims=0),
        node("Sub", ["highest", "five"], ["over"]),
        node("Relu", ["over"], ["over0"]),
        node("Mul", ["over0", "scale"], ["trips_f"]),
        node("Cast", ["trips_f"], ["trips"], to=TensorProto.INT64),
        node("Mul", ["highest", "zero"], ["nothing"]),
        node("Add", ["nothing", "ones"], ["state0"]),
        node("Loop", ["trips", "true", "state0"], ["state"], body=body),
        node("ReduceMean", ["state"], ["state_mean"], keepdims=0),
        # both traps feed the logits with weight zero, so the graph keeps them
        node("Add", ["state_mean", "gathered"], ["extra"]),
        node("Mul", ["extra", "zero"], ["extra0"]),
        node("Add", ["logits0", "extra0"], ["logits"]),
    ]  # fmt: skip
    initializers = {
        "W": weight,
        "B": np.zeros(k, np.float32),
        "zero": np.array(0.0, np.float32),
        "five": np.array(5.0, np.float32),
        "scale": np.array(scale, np.float32),
        "one_element": np.array([0.0], np.float32),
        "true": np.array(True),
        "ones": np.ones((dim, dim), np.float32),
        "C": np.eye(dim, dtype=np.float32) * 0.5 + 0.01,
    }
    graph = helper.make_graph(
        nodes, "trap",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])],
        initializer=[numpy_helper.from_array(v, name) for name, v in initializers.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return _save(model, path, metadata(std=std))


def make_gray_model(path: Path) -> Path:
    """A classifier whose input has 1 channel: the server feeds RGB, so it must not load."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        ],
        "gray",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[
            numpy_helper.from_array(np.ones((1, 3), np.float32), "W"),
            numpy_helper.from_array(np.zeros(3, np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return _save(model, path, metadata())


def make_mislabelled_model(path: Path) -> Path:
    """The tiny model (3 outputs) whose metadata lists 4 labels."""
    make_tiny_model(path, size=SIZE)
    model = onnx.load(str(path))
    return _save(model, path, metadata(labels=["red", "green", "blue", "purple"]))


def make_unknown_width_model(path: Path) -> Path:
    """Computes 3 classes, lists 2 labels, and its class axis cannot be known before a run:
    the logits are sliced to an end computed from the input (always 3, but not to shape
    inference), so ONNX Runtime reports the output as [N, ?]."""
    k = 3
    weight = np.zeros((3, k + 2), dtype=np.float32)
    for i in range(k):
        weight[i, i] = 4.0
    node = helper.make_node
    graph = helper.make_graph(
        [
            node("GlobalAveragePool", ["input"], ["pooled"]),
            node("Flatten", ["pooled"], ["flat"], axis=1),
            node("Gemm", ["flat", "W", "B"], ["wide"]),
            node("ReduceMax", ["input"], ["highest"], keepdims=0),
            node("Mul", ["highest", "zero"], ["nothing"]),
            node("Add", ["nothing", "three"], ["end_f"]),
            node("Cast", ["end_f"], ["end0"], to=TensorProto.INT64),
            node("Unsqueeze", ["end0", "axis0"], ["end"]),
            node("Slice", ["wide", "start", "end", "axis1"], ["logits"]),
        ],
        "unknown_width",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", None])],
        initializer=[
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.zeros(k + 2, np.float32), "B"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(3.0, np.float32), "three"),
            numpy_helper.from_array(np.array([0], np.int64), "axis0"),
            numpy_helper.from_array(np.array([0], np.int64), "start"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return _save(model, path, metadata(labels=["red", "green"]))


def stage_version(repo: Path, name: str, version: int, build: Callable[[Path], Path]) -> None:
    """Build a version beside the repository and rename it into place (a poller never sees
    it half written)."""
    staging = repo.parent / f"staging-{name}-{version}"
    build(staging / "model.onnx")
    (repo / name).mkdir(parents=True, exist_ok=True)
    os.replace(staging, repo / name / str(version))


# --- helpers -------------------------------------------------------------------------------


def wait_for(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll `check` until it holds (bounded)."""
    until = time.monotonic() + timeout
    while not check():
        if time.monotonic() > until:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def samples(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples(server).items() if n == name and want <= set(lab))


def health(server: ServerProcess) -> int:
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def start_settled(repo: Path, workdir: Path, *args: str) -> ServerProcess:
    """Start `imgclf serve` and wait until it has finished loading (ready or not): the log's
    "ready: serving ..." / "NOT ready: serving ..." line. start_server waits for SERVING,
    which a server that is truthfully not ready never reports."""
    grpc_port, metrics_port = free_port(), free_port()
    log_path = workdir / "server.log"
    cmd = [
        sys.executable, "-m", "imgclf.cli", "serve", "--model-repository", str(repo),
        "--host", "127.0.0.1", "--grpc-port", str(grpc_port), "--http-port", "0",
        "--metrics-port", str(metrics_port), *args,
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).parents[2])  # fmt: skip
    server = ServerProcess(proc, grpc_port, metrics_port, log_path)
    try:
        wait_for(
            lambda: proc.poll() is not None or re.search(r"ready: serving", server.log()),
            "server settled", timeout=120,
        )  # fmt: skip
        assert proc.poll() is None, f"server exited with {proc.returncode}:\n{server.log()}"
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return server


# --- bad model files at start-up -----------------------------------------------------------

BAD_MODELS = ("broken", "mislabelled", "gray")


@pytest.fixture(scope="module")
def fault_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("fault-repo")
    make_tiny_model(repo / "tiny" / "1" / "model.onnx", size=SIZE)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"this is not an ONNX model")
    make_mislabelled_model(repo / "mislabelled" / "1" / "model.onnx")
    make_gray_model(repo / "gray" / "1" / "model.onnx")
    make_unknown_width_model(repo / "wide" / "1" / "model.onnx")
    (repo / "empty" / "1").mkdir(parents=True)  # a version folder without model.onnx
    (repo / "empty" / "1" / "notes.txt").write_text("no model here")
    return repo


def assert_models_truthful(server: ServerProcess) -> None:
    """tiny serves; each bad model is FAILED with its reason, not ready, refused UNAVAILABLE;
    the version folder without a model file is no model at all."""
    oip = triton.InferenceServerClient(server.target)
    try:
        assert oip.is_server_live()
        assert oip.is_model_ready("tiny")
        index = {(m.name, m.version): m for m in oip.get_model_repository_index().models}
        for name in BAD_MODELS:
            assert not oip.is_model_ready(name), name
            assert index[(name, "1")].state == "FAILED", index[(name, "1")]
            assert index[(name, "1")].reason
        assert "but the metadata names 4 labels" in index[("mislabelled", "1")].reason
        assert "does not match the model input" in index[("gray", "1")].reason
        assert "empty" not in {name for name, _ in index}
    finally:
        oip.close()
    with Client(server.target) as client:
        assert client.classify([RED_PNG], model="tiny").results[0].top[0].label == "red"
        for name in BAD_MODELS:
            with pytest.raises(grpc.RpcError) as caught:
                client.classify([RED_PNG], model=name)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, name
            assert "not ready" in caught.value.details()
    for name in BAD_MODELS:
        assert metric(server, "imgclf_model_load_failures_total", model=name) == 1, name
        assert metric(server, "imgclf_model_state", model=name, state="FAILED") == 1, name
    assert metric(server, "imgclf_model_state", model="tiny", state="READY") == 1
    assert server.proc.poll() is None


def test_bad_model_files_at_start_keep_the_rest_serving_and_readiness_says_not_ready(
    fault_repo: Path, tmp_path: Path
) -> None:
    """Default strict readiness: a wanted model that failed makes the server NOT ready
    (health NOT_SERVING, ServerReady false), while the good model serves."""
    server = start_settled(fault_repo, tmp_path, "--instances", "1")
    try:
        assert "NOT ready: serving" in server.log()
        assert health(server) == health_pb2.HealthCheckResponse.NOT_SERVING
        oip = triton.InferenceServerClient(server.target)
        assert not oip.is_server_ready()
        oip.close()
        assert_models_truthful(server)
    finally:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def lenient_server(
    fault_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    server = start_server(
        fault_repo, tmp_path_factory.mktemp("lenient"), "--no-strict-readiness", "--instances", "1"
    )
    yield server
    server.stop()


def test_without_strict_readiness_the_server_is_ready_and_models_stay_truthful(
    lenient_server: ServerProcess,
) -> None:
    assert health(lenient_server) == health_pb2.HealthCheckResponse.SERVING
    oip = triton.InferenceServerClient(lenient_server.target)
    assert oip.is_server_ready()
    oip.close()
    assert_models_truthful(lenient_server)


def test_labels_that_disagree_with_an_unknown_output_width_fail_the_load(
    lenient_server: ServerProcess,
) -> None:
    """`wide` computes 3 classes and lists 2 labels, and its output width is unknown until it
    runs. The load-time check compares the labels only with a width known from the graph, so
    the model loads, reports ready, and every request for it fails with INTERNAL (top-k
    indexes a label that does not exist). Warm-up runs the model: the width is known then."""
    oip = triton.InferenceServerClient(lenient_server.target)
    try:
        index = {(m.name, m.version): m for m in oip.get_model_repository_index().models}
        with Client(lenient_server.target) as client:
            try:
                reply = client.classify([RED_PNG], model="wide")
                outcome = f"OK: {[s.label for s in reply.results[0].top]}"
            except grpc.RpcError as exc:
                outcome = f"{exc.code().name}: {exc.details()}"
        assert not oip.is_model_ready("wide"), f"wide serves; a request gets {outcome}"
        assert index[("wide", "1")].state == "FAILED"
        assert "labels" in index[("wide", "1")].reason
    finally:
        oip.close()


# --- bad model files at reload -------------------------------------------------------------


def test_a_wrong_shape_version_at_reload_leaves_the_old_one_serving(tmp_path: Path) -> None:
    """Poll mode: a new version with a 1-channel input, then one whose labels disagree with
    its outputs, each FAILED; version 1 serves throughout and readiness stays SERVING."""
    repo = tmp_path / "models"
    make_tiny_model(repo / "tiny" / "1" / "model.onnx", size=SIZE)
    server = start_server(
        repo, tmp_path, "--model-control-mode", "poll", "--poll-interval-s", "0.3",
        "--instances", "1",
    )  # fmt: skip
    oip = triton.InferenceServerClient(server.target)
    try:
        for version, build, reason in (
            (2, make_gray_model, "does not match the model input"),
            (3, make_mislabelled_model, "but the metadata names 4 labels"),
        ):
            stage_version(repo, "tiny", version, build)

            def failed(v: str = str(version)) -> bool:
                rows = oip.get_model_repository_index().models
                return any(m.version == v and m.state == "FAILED" for m in rows)

            wait_for(failed, f"version {version} FAILED")
            (row,) = [m for m in oip.get_model_repository_index().models
                      if m.version == str(version)]  # fmt: skip
            assert reason in row.reason
            with Client(server.target) as client:
                reply = client.classify([RED_PNG], model="tiny")
            assert (reply.version, reply.results[0].top[0].label) == (1, "red")
            assert oip.is_model_ready("tiny") and oip.is_model_ready("tiny", "1")
            assert not oip.is_model_ready("tiny", str(version))
            assert health(server) == health_pb2.HealthCheckResponse.SERVING
        assert metric(server, "imgclf_model_load_failures_total", model="tiny") == 2
    finally:
        oip.close()
        server.stop()


# --- engine errors, cancellations, overload: one server, one model each -------------------


@pytest.fixture(scope="module")
def trap_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("trap-repo")
    configs = {
        # batches of up to 8 gathered over 200 ms: one poisoned request fails its neighbours
        "trap": ({}, {"max_batch_size": 8, "max_queue_delay_ms": 200}),
        # one image per batch, 8 may wait: a slow batch keeps the queue full
        "trap1": ({}, {"max_batch_size": 1, "max_queue_size": 8}),
        # encoded red images are slow here (std 0.1 puts red at 8.6 > 5): ~150 products/batch
        "burst": ({"std": 0.1, "scale": 40.0},
                  {"max_batch_size": 2, "max_queue_size": 4, "max_queue_delay_ms": 0}),
        # red is slow here too (~150 products per image: a few per 0.5 s even on an idle
        # machine), one image per batch, 64 may wait
        "slowred": ({"std": 0.1, "scale": 40.0},
                    {"max_batch_size": 1, "max_queue_size": 64, "max_queue_delay_ms": 0}),
    }  # fmt: skip
    for name, (model_args, config) in configs.items():
        make_trap_model(repo / name / "1" / "model.onnx", **model_args)
        (repo / name / "config.json").write_text(json.dumps(config))
    server = start_server(
        repo, tmp_path_factory.mktemp("trap-server"), "--instances", "1",
        "--intra-op-threads", "1", "--preprocess-threads", "2",
    )  # fmt: skip
    yield server
    server.stop()


def red_tensor(fill: float | None = None) -> np.ndarray:
    """The tiny model's red, with one element set to `fill` (a trap value)."""
    tensor = np.zeros((3, SIZE, SIZE), dtype=np.float32)
    tensor[0] = 1.0
    if fill is not None:
        tensor[0, 0, 0] = fill
    return tensor


def classify_outcome(target: str, tensor: np.ndarray, model: str) -> tuple[str, str]:
    with Client(target, timeout=60) as client:
        try:
            reply = client.classify([tensor], model=model)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""
    return "OK", reply.results[0].top[0].label


def test_an_engine_error_fails_only_its_batch_with_a_generic_internal(
    trap_server: ServerProcess,
) -> None:
    target = trap_server.target
    before = metric(trap_server, "imgclf_request_failures_total", model="trap",
                    reason="inference_failed")  # fmt: skip
    # One poisoned request and three good ones inside one 200 ms batching window.
    tensors = [red_tensor(-3.0)] + [red_tensor()] * 3
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda t: classify_outcome(target, t, "trap"), tensors))
    assert outcomes[0] == ("INTERNAL", GENERIC_INTERNAL)
    for outcome in outcomes[1:]:  # a neighbour in the poisoned batch fails with it
        assert outcome in {("OK", "red"), ("INTERNAL", GENERIC_INTERNAL)}, outcome
    # The next batch is served.
    with ThreadPoolExecutor(4) as pool:
        again = list(pool.map(lambda t: classify_outcome(target, t, "trap"), [red_tensor()] * 4))
    assert again == [("OK", "red")] * 4
    # The Open Inference Protocol too.
    oip = triton.InferenceServerClient(target)
    try:
        poison = triton.InferInput("input", [1, 3, SIZE, SIZE], "FP32")
        poison.set_data_from_numpy(red_tensor(-3.0)[None])
        with pytest.raises(InferenceServerException) as caught:
            oip.infer("trap", [poison])
        assert caught.value.status() == "StatusCode.INTERNAL"
        assert caught.value.message() == GENERIC_INTERNAL
        good = triton.InferInput("input", [1, 3, SIZE, SIZE], "FP32")
        good.set_data_from_numpy(red_tensor()[None])
        probabilities = oip.infer("trap", [good]).as_numpy("probabilities")
        assert int(np.argmax(probabilities[0])) == LABELS.index("red")
    finally:
        oip.close()
    failed = sum(code == "INTERNAL" for code, _ in outcomes) + 1
    after = metric(trap_server, "imgclf_request_failures_total", model="trap",
                   reason="inference_failed")  # fmt: skip
    assert after - before == failed
    log = trap_server.log()
    assert "inference failed on a batch of" in log
    assert "indices element out of data bounds" in log  # the details are in the log
    assert trap_server.proc.poll() is None


def test_cancelled_and_disconnected_clients_free_their_queue_slots(
    trap_server: ServerProcess,
) -> None:
    """trap1 batches one image at a time and lets 8 wait. While a slow batch runs, 8 clients
    fill the queue (a ninth is refused), then give up: 3 by deadline, 3 by cancelling, 2 by
    closing their connection. The queue drains to 0 and a full-capacity burst is accepted."""
    mv = {"model": "trap1", "version": "1"}
    before = {
        reason: metric(trap_server, "imgclf_request_failures_total", reason=reason, **mv)
        for reason in ("cancelled", "deadline_exceeded", "queue_full")
    }

    def request(tensor: np.ndarray) -> pb.ClassifyRequest:
        return pb.ClassifyRequest(model="trap1", images=[tensor_image(tensor)])

    def depth() -> float:
        return metric(trap_server, "imgclf_queue_depth", **mv)

    def inflight() -> float:
        return metric(trap_server, "imgclf_inflight_requests")

    staying = open_channel(trap_server.target)
    leaving = open_channel(trap_server.target)
    stub, doomed = pb_grpc.ImageClassifierStub(staying), pb_grpc.ImageClassifierStub(leaving)
    try:
        # The in-flight gauge is server-wide: count from its value now, not from zero.
        busy = inflight()
        blocker = stub.Classify.future(request(red_tensor(65.0)), timeout=120)  # ~6000 products
        wait_for(lambda: inflight() >= busy + 1, "the slow request in flight")
        assert not blocker.done(), f"the slow request ended at once: {blocker.exception()!r}"
        time.sleep(0.2)  # the worker takes it at once: the queue is empty behind it
        to_cancel = [stub.Classify.future(request(red_tensor()), timeout=120) for _ in range(3)]
        dropped = [doomed.Classify.future(request(red_tensor()), timeout=120) for _ in range(2)]
        by_deadline = [stub.Classify.future(request(red_tensor()), timeout=1.5) for _ in range(3)]
        wait_for(lambda: depth() == 8, "8 requests queued behind the slow batch")
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(request(red_tensor()), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for future in to_cancel:
            future.cancel()
        leaving.close()
        for future in dropped:
            assert future.exception(timeout=30).code() == grpc.StatusCode.CANCELLED
        for future in by_deadline:
            error = future.exception(timeout=30)
            assert error is not None, f"served before the slow batch ended ({blocker.done()=})"
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Each slot is freed when its client gives up, not when the worker reaches it.
        wait_for(lambda: depth() == 0, "the queue emptied while the slow batch runs")
        assert not blocker.done(), "the slow batch ended before the clients gave up"
        assert blocker.result(timeout=120).results[0].top[0].label == "red"
        wait_for(lambda: depth() == 0 and inflight() == 0, "queue drained, nothing in flight")
        burst = [stub.Classify.future(request(red_tensor()), timeout=60) for _ in range(8)]
        assert [f.result(timeout=60).results[0].top[0].label for f in burst] == ["red"] * 8
    finally:
        staying.close()
        leaving.close()
    moved = {
        reason: metric(trap_server, "imgclf_request_failures_total", reason=reason, **mv) - n
        for reason, n in before.items()
    }
    assert moved["queue_full"] == 1
    assert moved["cancelled"] + moved["deadline_exceeded"] == 8, moved
    assert depth() == 0 and trap_server.proc.poll() is None


@pytest.fixture(scope="module")
def overload_run(trap_server: ServerProcess) -> dict:
    """One bounded run of benchmarks/overload.py against `burst` (4 may wait, batches of 2,
    ~150 matrix products each), with the server's counters around it."""
    before = samples(trap_server)
    request = pb.ClassifyRequest(model="burst", images=[pb.Image(encoded=RED_PNG)], top_k=1)
    report = asyncio.run(
        overload_bench.run(
            Target(trap_server.target, trap_server.metrics_url, trap_server.proc.pid),
            request, duration=2.0, factor=4.0, clients=8, capacity_concurrency=4,
            check_latency=False, light_seconds=0.5, log=lambda line: None,
        )
    )  # fmt: skip
    return {"report": report, "before": before, "after": samples(trap_server)}


def test_overload_refuses_fast_and_recovers(overload_run: dict) -> None:
    """Beyond capacity the server refuses with RESOURCE_EXHAUSTED (saying to retry) and
    nothing else; every accepted request gets the right answer; short deadlines end in
    DEADLINE_EXCEEDED; right after the burst a request succeeds and the queue is empty."""
    report: overload_bench.Report = overload_run["report"]
    codes = report.overload.codes()
    assert codes["RESOURCE_EXHAUSTED"] > 0 and codes["OK"] > 0, codes
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert all("retry" in o.message for o in report.overload.outcomes if o.code != "OK")
    assert set(report.deadline.codes()) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
    assert report.expected_label == "red"
    assert set(report.recovery.codes()) == {"OK"}
    assert report.failures == [], report.failures
    assert report.server["queue_depth_at_end"] == 0 and report.server["inflight_at_end"] == 0


def test_a_refused_request_costs_no_decoding(overload_run: dict) -> None:
    """Admission happens before the work: a request refused for a full queue must not have
    been decoded first (otherwise overload spends the CPU on images it then refuses, and the
    refusal waits behind every decode ahead of it)."""

    def delta(name: str, **labels: str) -> float:
        want = set({"model": "burst", **labels}.items())
        total = 0.0
        for key in ("after", "before"):
            value = sum(v for (n, lab), v in overload_run[key].items()
                        if n == name and want <= set(lab))  # fmt: skip
            total += value if key == "after" else -value
        return total

    requests = delta("imgclf_requests_total")
    refused = delta("imgclf_requests_total", code="RESOURCE_EXHAUSTED")
    decoded = delta("imgclf_preprocess_duration_seconds_count")
    assert refused > 0
    assert decoded <= requests - refused, (
        f"{decoded:.0f} images decoded for {requests:.0f} requests of which {refused:.0f} "
        "were refused: refused requests were decoded first"
    )


def test_deadline_overload_refuses_fast_and_computes_nothing_for_expired_callers(
    trap_server: ServerProcess,
) -> None:
    """30 requests at once with 0.5 s deadlines, on one instance that serves a few per 0.5 s:
    what cannot finish in time is refused at admission (RESOURCE_EXHAUSTED, fast, saying to
    retry), nothing is computed for a caller that gave up, and the server counts what the
    clients saw."""
    request = pb.ClassifyRequest(model="slowred", images=[pb.Image(encoded=RED_PNG)], top_k=1)
    deadline_s = 0.5
    with open_channel(trap_server.target) as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        for _ in range(3):  # the server measures its service time per image
            assert stub.Classify(request, timeout=WAIT_S).results[0].top[0].label == "red"
        before = samples(trap_server)
        started = time.monotonic()
        calls = [stub.Classify.future(request, timeout=deadline_s) for _ in range(30)]
        ended: dict[int, float] = {}
        for i, call in enumerate(calls):
            call.add_done_callback(lambda _f, i=i: ended.setdefault(i, time.monotonic()))
        outcomes: list[tuple[str, str]] = []
        for call in calls:
            try:
                call.result()
                outcomes.append(("OK", ""))
            except grpc.RpcError as exc:
                outcomes.append((exc.code().name, exc.details() or ""))
    codes = Counter(code for code, _ in outcomes)
    refused = [m for code, m in outcomes if code == "RESOURCE_EXHAUSTED"]
    refusal_s = sorted(
        ended[i] - started for i, (code, _) in enumerate(outcomes) if code == "RESOURCE_EXHAUSTED"
    )
    assert codes["OK"] > 0 and refused, codes
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, codes
    assert all("retry later" in m for m in refused), refused[:3]
    # Refused at admission, not after waiting: well before the deadline.
    assert refusal_s[len(refusal_s) // 2] < deadline_s / 2 and refusal_s[-1] < deadline_s, refusal_s
    deadline = time.monotonic() + WAIT_S
    while metric(trap_server, "imgclf_inflight_requests") and time.monotonic() < deadline:
        time.sleep(0.05)
    after = samples(trap_server)

    def moved(name: str, **labels: str) -> float:
        want = set({"model": "slowred", **labels}.items())
        return sum(
            v - before.get(k, 0.0) for k, v in after.items() if k[0] == name and want <= set(k[1])
        )

    computed = moved("imgclf_batch_size_sum")
    # Work for callers that gave up: at most the one image the instance had started when
    # its deadline passed.
    assert computed <= codes["OK"] + 1, (computed, codes)
    assert moved("imgclf_requests_total", code="DEADLINE_EXCEEDED") == codes["DEADLINE_EXCEEDED"]
    assert moved("imgclf_requests_total", code="CANCELLED") == 0
    assert moved("imgclf_request_failures_total", reason="deadline_unmeetable") == len(refused)
