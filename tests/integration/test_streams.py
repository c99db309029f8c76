"""Long-lived streams and connections on the real server: idle streams do not hold shutdown,
a stream whose client never reads is not read without bound, idle connections are closed."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imgclf._generated.inference import grpc_service_pb2 as oip_pb
from imgclf._generated.inference import grpc_service_pb2_grpc as oip_grpc
from imgclf.client.bench.launcher import start_server
from imgclf.grpc.inference import STREAM_WINDOW
from tests.tiny_model import make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZE = 128
CLASSES = 4000
"""Answers of 2 x 16 KB (logits and probabilities): a few hundred fill a client's window."""
SENT = 300
OPTIONS = [
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.max_receive_message_length", 16 << 20),
]


def infer_request(i: int, size: int = SIZE) -> oip_pb.ModelInferRequest:
    request = oip_pb.ModelInferRequest(model_name="tiny", id=str(i))
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3, size, size])
    request.raw_input_contents.append(np.zeros((1, 3, size, size), np.float32).tobytes())
    return request


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def ok_requests(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('imgclf_requests_total{code="OK",model="tiny"')
    )


def test_idle_streams_do_not_hold_shutdown(tmp_path: Path) -> None:
    make_tiny_model(tmp_path / "repo" / "tiny" / "1" / "model.onnx")
    # A batching window keeps the stream's last request in flight ~300 ms when SIGTERM lands.
    server = start_server(
        tmp_path / "repo", tmp_path, "--max-queue-delay-ms", "300", "--max-batch-size", "64"
    )
    channel = grpc.insecure_channel(server.target)
    try:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=60
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        sent: list[oip_pb.ModelInferRequest] = []
        go_on = threading.Event()

        def requests() -> Iterator[oip_pb.ModelInferRequest]:
            yield infer_request(0, 16)
            go_on.wait(30)
            yield infer_request(1, 16)  # in flight when SIGTERM lands
            sent.append(infer_request(1, 16))
            time.sleep(60)  # then idle: the client never closes its side

        stream = oip_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=60)
        assert next(stream).infer_response.id == "0"
        time.sleep(0.5)  # both streams idle
        go_on.set()
        while not sent:
            time.sleep(0.01)
        time.sleep(0.05)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        # The stream answers what it had read, then ends; Watch says NOT_SERVING, then ends.
        answers = list(stream)
        assert [a.infer_response.id for a in answers] == ["1"], answers
        assert not answers[0].error_message
        statuses = [r.status for r in watch]
        assert statuses and statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
        streams_ended = time.monotonic() - started
        assert server.proc.wait(30) == 0, server.log()
        exited = time.monotonic() - started
    finally:
        channel.close()
        if server.proc.poll() is None:
            server.stop()
    print(f"idle streams: ended {streams_ended:.2f} s, exit {exited:.2f} s after SIGTERM")
    # Work in flight: at most the 300 ms batching window. Before, both waited for the end of
    # the grace period (30 s). The exit adds the interpreter's own teardown.
    assert streams_ended <= 1.0 + 0.3, f"streams ended {streams_ended:.2f} s after SIGTERM"
    assert exited <= 5.0, f"exit took {exited:.2f} s with idle streams open"


def test_stream_whose_client_never_reads_is_not_read_without_bound(tmp_path: Path) -> None:
    labels = [f"class{i}" for i in range(CLASSES)]
    make_tiny_model(tmp_path / "repo" / "tiny" / "1" / "model.onnx", size=SIZE, labels=labels)
    server = start_server(tmp_path / "repo", tmp_path, "--instances", "1")
    sender = grpc.insecure_channel(server.target, options=OPTIONS)
    other = grpc.insecure_channel(server.target, options=OPTIONS)
    try:
        before = rss_mb(server.proc.pid)
        written = 0
        stop = threading.Event()

        def requests() -> Iterator[oip_pb.ModelInferRequest]:
            nonlocal written
            for i in range(SENT):
                yield infer_request(i)
                written += 1
            stop.wait(60)

        call = oip_grpc.GRPCInferenceServiceStub(sender).ModelStreamInfer(requests(), timeout=60)
        peak = before
        settle_until = time.monotonic() + 15
        last = -1.0
        while time.monotonic() < settle_until:  # until the server stops computing
            time.sleep(0.5)
            peak = max(peak, rss_mb(server.proc.pid))
            done = ok_requests(server.metrics_url)
            if done == last and done > 0:
                break
            last = done
        computed = ok_requests(server.metrics_url)
        # Another client is served meanwhile, promptly.
        t = time.monotonic()
        reply = oip_grpc.GRPCInferenceServiceStub(other).ModelInfer(infer_request(0), timeout=10)
        assert reply.outputs and time.monotonic() - t < 2.0
        stop.set()
        call.cancel()
    finally:
        sender.close()
        other.close()
        server.stop()
    # Computed: the window, plus the answers the client's HTTP/2 window took in unread.
    # Before, all 300 were read and computed, the answers piling up in the server.
    print(f"never-reading stream: {written} sent, {computed:.0f} computed, +{peak - before:.0f} MB")
    assert STREAM_WINDOW <= computed < SENT * 2 / 3, (computed, written)
    assert written < SENT, "the client could send everything: nothing pushed back"
    assert peak - before < 100, f"server grew by {peak - before:.0f} MB"


def test_idle_connection_is_closed(tmp_path: Path) -> None:
    make_tiny_model(tmp_path / "repo" / "tiny" / "1" / "model.onnx")
    server = start_server(tmp_path / "repo", tmp_path, "--max-connection-idle-s", "0.5")
    states: list[grpc.ChannelConnectivity] = []
    channel = grpc.insecure_channel(server.target)
    try:
        channel.subscribe(states.append, try_to_connect=False)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
        until = time.monotonic() + 5
        while states[-1:] != [grpc.ChannelConnectivity.IDLE] and time.monotonic() < until:
            time.sleep(0.05)
        # The server sent GOAWAY: the channel went from READY back to IDLE by itself...
        assert grpc.ChannelConnectivity.READY in states
        assert states[-1] == grpc.ChannelConnectivity.IDLE, states
        # ...and reconnects for the next call.
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
    finally:
        channel.close()
        server.stop()


def test_streams_benchmark_short_run(tmp_path: Path) -> None:
    """`python -m benchmarks.streams --check` for real, with small numbers on the tiny model:
    both scenarios run and every bound it checks holds."""
    labels = [f"class{i}" for i in range(CLASSES)]
    make_tiny_model(tmp_path / "repo" / "tiny" / "1" / "model.onnx", size=SIZE, labels=labels)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.streams", "--check",
         "--model-repository", str(tmp_path / "repo"), "--model", "tiny",
         "--watches", "2", "--idle-streams", "2", "--readers", "2", "--requests", "400",
         "--settle-s", "1"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    print(proc.stdout)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Watch             x2: ended" in proc.stdout
    assert "never-read  2 clients" in proc.stdout and "all bounds held" in proc.stdout
