"""Poll mode against a real server while the repository changes under it: a version copied
in slowly (in chunks, while polls run) loads once and never shows FAILED; deleting the folder
of the served version takes it out and the older version serves again; a FAILED version whose
folder is deleted leaves the index and `imgclf_model_state`; a model folder linking outside
the repository is never served."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import poll_copy
from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
from imgclf.client import open_channel
from imgclf.client.bench.launcher import ServerProcess, start_server
from tests.images import encode
from tests.tiny_model import make_tiny_model
from tests.traversal import OUTSIDE_MODEL, SIZE, layout

POLL_S = 0.5
CHUNKS = 24
CHUNK_PAUSE_S = 0.05
"""The copy takes 1.2 s (two polls or more see it half written); a write comes every tenth of
a poll interval, so only a writer stalled for a whole interval would look finished."""
TIMEOUT_S = 30.0
RED = encode(np.full((20, 20, 3), (230, 10, 10), dtype=np.uint8), "PNG")


def copy_slowly(data: bytes, target: Path, chunks: int = CHUNKS) -> None:
    """Write `data` to `target` in chunks, CHUNK_PAUSE_S apart, then give it an older mtime
    as `cp -p` does (one more change of the file's fingerprint after its bytes are done): the
    copy of benchmarks/poll_copy.py."""
    poll_copy.copy_slowly(data, target, chunks, CHUNK_PAUSE_S)


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    until = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < until, "condition still false after the timeout"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo, _ = layout(tmp_path_factory.mktemp("poll"))
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    proc = start_server(
        repo, repo.parent, "--model-control-mode", "poll", "--poll-interval-s", str(POLL_S),
        "--instances", "1", "--intra-op-threads", "1", "--preprocess-threads", "1",
    )  # fmt: skip
    yield proc
    proc.stop()


class Probe:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.channel = open_channel(server.target)
        self.ours = pb_grpc.ImageClassifierStub(self.channel)
        self.triton = triton.InferenceServerClient(server.target)

    def served_version(self) -> int:
        request = pb.ClassifyRequest(model="tiny", images=[pb.Image(encoded=RED)])
        reply = self.ours.Classify(request, timeout=TIMEOUT_S)
        assert reply.results[0].top[0].label == "red"
        return reply.version

    def index(self) -> dict[tuple[str, str], str]:
        rows = self.triton.get_model_repository_index(as_json=True, client_timeout=TIMEOUT_S)
        return {(m["name"], m.get("version", "")): m.get("state", "") for m in rows["models"]}

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        with urllib.request.urlopen(self.server.metrics_url, timeout=10) as reply:
            text = reply.read().decode()
        return [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def states(self) -> dict[tuple[str, str, str], float]:
        return {
            (labels["model"], labels["version"], labels["state"]): value
            for name, labels, value in self.metrics()
            if name == "imgclf_model_state"
        }

    def close(self) -> None:
        self.channel.close()
        self.triton.close()


@pytest.fixture(scope="module")
def probe(server: ServerProcess) -> Iterator[Probe]:
    p = Probe(server)
    yield p
    p.close()


def test_the_poll_scenario(server: ServerProcess, probe: Probe, repo: Path) -> None:
    assert probe.served_version() == 1
    source = make_tiny_model(repo.parent / "staging" / "model.onnx", size=SIZE)

    # 1. A version copied in slowly while polls run: loaded once, never FAILED.
    target = repo / "tiny" / "2" / "model.onnx"
    copier = threading.Thread(target=copy_slowly, args=(source.read_bytes(), target))
    copier.start()
    seen_states: set[str] = set()
    while copier.is_alive():  # watch the index during the copy
        seen_states.add(probe.index().get(("tiny", "2"), "absent"))
        time.sleep(0.05)
    copier.join()
    wait_for(lambda: probe.served_version() == 2)
    time.sleep(POLL_S * 3)  # more polls: nothing more to load
    assert "FAILED" not in seen_states, seen_states
    log = server.log()
    assert log.count("model tiny version 2 loaded in") == 1, "version 2 loaded more than once"
    assert "version 2 failed to load" not in log
    assert probe.index()[("tiny", "2")] == "READY"
    failures = [v for n, lb, v in probe.metrics() if n == "imgclf_model_load_failures_total"
                and lb["model"] == "tiny"]  # fmt: skip
    assert failures == [0.0]

    # 2. Deleting the served version's folder: it leaves; version 1 serves again.
    for f in sorted((repo / "tiny" / "2").iterdir()):
        f.unlink()
    (repo / "tiny" / "2").rmdir()
    wait_for(lambda: probe.served_version() == 1)
    wait_for(lambda: ("tiny", "2") not in probe.index())
    assert probe.index()[("tiny", "1")] == "READY"
    assert not [k for k in probe.states() if k[:2] == ("tiny", "2")]

    # 3. A FAILED version whose folder is deleted leaves the index and the state metric.
    bad = repo / "tiny" / "3" / "model.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00not an ONNX model\xff" * 8)
    wait_for(lambda: probe.index().get(("tiny", "3")) == "FAILED")
    assert probe.states()[("tiny", "3", "FAILED")] == 1
    assert probe.served_version() == 1  # the failed new version left version 1 serving
    bad.unlink()
    bad.parent.rmdir()
    wait_for(lambda: ("tiny", "3") not in probe.index())
    assert not [k for k in probe.states() if k[:2] == ("tiny", "3")]
    assert probe.served_version() == 1

    # 4. Links out of the repository were never served by the poller.
    models = {name for name, _ in probe.index()}
    assert models == {"tiny"}, models
    assert {lb["model"] for _, lb, _ in probe.metrics() if "model" in lb} <= {"tiny", ""}
    assert f"model {OUTSIDE_MODEL}" not in server.log()
    assert "repository entry 'link-model' ignored" in server.log()
    assert server.proc.poll() is None
