"""Model lifecycle on a real server: hot reload under load, corrupt versions, explicit control,
foreign ONNX classifiers served from a config.json."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from imgclf.client import Client
from imgclf.client.bench.launcher import start_server
from tests.images import encode
from tests.integration.test_server import sample, scrape
from tests.tiny_model import make_tiny_model

RED = encode(np.full((20, 20, 3), (230, 10, 10), dtype=np.uint8), "PNG")
POLL_S = 0.5
WAIT_S = 20.0


def wait_for(check: Callable[[], bool], timeout: float = WAIT_S, step: float = 0.1) -> float:
    """Poll `check` until it holds (bounded); returns the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)
    return time.monotonic() - started


def test_new_version_serves_within_two_poll_intervals_with_no_failed_request(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "models"
    make_tiny_model(repo / "tiny" / "1" / "model.onnx")
    server = start_server(repo, tmp_path, "--model-control-mode", "poll",
                          "--poll-interval-s", str(POLL_S))  # fmt: skip
    stop = threading.Event()
    seen: list[tuple[int, str]] = []  # (version, top-1 label) of every answer
    failures: list[str] = []

    def client_loop(_: int) -> None:
        with Client(server.target, timeout=30) as client:
            while not stop.is_set():
                try:
                    reply = client.classify([RED], model="tiny")
                    seen.append((reply.version, reply.results[0].top[0].label))
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")

    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client_loop, i) for i in range(6)]
            wait_for(lambda: len(seen) > 50)
            # Version 2 answers with other labels, so each reply says which version served it.
            make_tiny_model(repo / "tiny" / "2" / "model.onnx", labels=["RED", "GREEN", "BLUE"])
            took = wait_for(lambda: any(v == 2 for v, _ in seen[-20:]))
            served_before = len(seen)
            wait_for(lambda: len(seen) > served_before + 50)

            # A corrupt version 3 fails to load; version 2 keeps serving.
            (repo / "tiny" / "3").mkdir()
            (repo / "tiny" / "3" / "model.onnx").write_bytes(b"not an onnx model")
            index = triton.InferenceServerClient(server.target)
            wait_for(lambda: any(m.version == "3" and m.state == "FAILED"
                                 for m in index.get_model_repository_index().models))  # fmt: skip
            after_corrupt = len(seen)
            wait_for(lambda: len(seen) > after_corrupt + 50)
            stop.set()
            for f in futures:
                f.result(timeout=30)
        assert failures == []
        assert took < POLL_S + 10, f"version 2 took {took:.1f}s to serve"
        assert {label for v, label in seen if v == 1} == {"red"}
        assert {label for v, label in seen if v == 2} == {"RED"}
        assert {v for v, _ in seen[after_corrupt:]} == {2}
        failed = [m for m in index.get_model_repository_index().models if m.version == "3"]
        assert failed[0].state == "FAILED" and failed[0].reason
        index.close()
        metrics = scrape(server)
        assert sample(metrics, "imgclf_model_load_failures_total", model="tiny") >= 1
        assert sample(metrics, "imgclf_model_state", model="tiny", version="2", state="READY") == 1
        assert sample(metrics, "imgclf_model_state", model="tiny", version="3", state="FAILED") == 1
        assert sample(metrics, "imgclf_model_state", model="tiny", version="1", state="READY") == 0
        assert "version 3 failed to load" in server.log()
    finally:
        stop.set()
        server.stop()


def test_explicit_control_loads_and_unloads_by_rpc(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    make_tiny_model(repo / "first" / "1" / "model.onnx")
    make_tiny_model(repo / "second" / "1" / "model.onnx")
    server = start_server(repo, tmp_path, "--model-control-mode", "explicit",
                          "--load-model", "first")  # fmt: skip
    client = triton.InferenceServerClient(server.target)
    try:
        assert client.is_model_ready("first")
        assert not client.is_model_ready("second")
        client.load_model("second")
        assert client.is_model_ready("second")
        with Client(server.target) as ours:
            assert ours.classify([RED], model="second").results[0].top[0].label == "red"
        client.unload_model("second")
        wait_for(lambda: not client.is_model_ready("second"))
        with pytest.raises(InferenceServerException) as caught:
            client.load_model("no-such-model")
        assert caught.value.status() == "StatusCode.NOT_FOUND"
    finally:
        client.close()
        server.stop()


def test_foreign_onnx_classifier_serves_from_a_config_json(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    path = make_tiny_model(repo / "foreign" / "4" / "model.onnx", with_metadata=False, size=24,
                           labels=["crimson", "lime", "navy"])  # fmt: skip
    (path.parent / "config.json").write_text(json.dumps({
        "labels": ["crimson", "lime", "navy"],
        "input_size": [24, 24],
        "resize_size": 24,
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "output": "logits",
    }))  # fmt: skip
    server = start_server(repo, tmp_path)
    try:
        with Client(server.target) as client:
            (info,) = client.list_models().models
            assert list(info.input_shape) == [3, 24, 24]
            reply = client.classify([RED, encode(np.full((30, 40, 3), (0, 0, 250), np.uint8))])
        assert (reply.model, reply.version) == ("foreign", 4)
        assert [r.top[0].label for r in reply.results] == ["crimson", "navy"]
    finally:
        server.stop()
