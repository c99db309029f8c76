"""No client reaches a file outside the model repository, and no error tells where it is.

A real server in explicit mode over tests/traversal.py's layout (a repository with `tiny` and
a corrupt `broken`, a valid model `evil` beside it, links out of it), started with traversal
names in its `--load-model` list. Every traversal name is sent through every door a client
has: RepositoryModelLoad / RepositoryModelUnload / ModelMetadata / ModelConfig / ModelInfer
(and ModelReady, which answers false) with tritonclient, Classify with our own RPC. Each must
be refused with INVALID_ARGUMENT or NOT_FOUND (see SECURITY.md), and the outside model must
never load nor show in the repository index, ListModels or a metric label.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
from imgclf.client import open_channel
from imgclf.client.bench.launcher import ServerProcess, start_server
from imgclf.errors import MAX_MESSAGE_CHARS
from tests.images import encode
from tests.traversal import LINKS, OUTSIDE_MODEL, layout, traversal_names

REFUSED = {"INVALID_ARGUMENT", "NOT_FOUND"}
TIMEOUT_S = 30.0
RED = encode(np.full((20, 20, 3), (230, 10, 10), dtype=np.uint8), "PNG")
STARTUP_NAMES = ("../outside/evil", "link-model", "link-version", "link-file", "..", "tiny/1")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("traversal")


@pytest.fixture(scope="module")
def server(tmp: Path) -> Iterator[ServerProcess]:
    repo, outside = layout(tmp)
    broken = repo / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x00not an ONNX model\xff" * 8)
    startup = [*STARTUP_NAMES, str(outside / OUTSIDE_MODEL)]
    proc = start_server(
        repo, tmp, "--model-control-mode", "explicit", "--load-model", "tiny",
        *[arg for name in startup for arg in ("--load-model", name)],
        "--instances", "1", "--intra-op-threads", "1", "--preprocess-threads", "1",
    )  # fmt: skip
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def clients(server: ServerProcess) -> Iterator[tuple[triton.InferenceServerClient, object]]:
    tc = triton.InferenceServerClient(server.target)
    channel = open_channel(server.target)
    yield tc, pb_grpc.ImageClassifierStub(channel)
    channel.close()
    tc.close()


def code_of(exc: InferenceServerException) -> str:
    return str(exc.status()).removeprefix("StatusCode.")


def refusal(call: object, *args: object, **kwargs: object) -> tuple[str, str]:
    """(status code, message) of a tritonclient call that must fail."""
    try:
        call(*args, **kwargs)  # type: ignore[operator]
    except InferenceServerException as exc:
        return code_of(exc), exc.message() or ""
    raise AssertionError(f"{getattr(call, '__name__', call)}{args} was not refused")


def classify_refusal(ours: object, name: str) -> tuple[str, str]:
    request = pb.ClassifyRequest(model=name, images=[pb.Image(encoded=RED)])
    try:
        ours.Classify(request, timeout=TIMEOUT_S)  # type: ignore[attr-defined]
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""
    raise AssertionError(f"Classify with model {name!r} was served")


def metric_model_labels(server: ServerProcess) -> set[str]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        s.labels["model"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "model" in s.labels
    }


def test_every_traversal_name_is_refused_at_every_door(
    server: ServerProcess, clients: tuple[triton.InferenceServerClient, object], tmp: Path
) -> None:
    tc, ours = clients
    names = traversal_names(tmp)
    tried = 0
    for name in names:
        doors = {
            "load": refusal(tc.load_model, name, client_timeout=TIMEOUT_S),
            "unload": refusal(tc.unload_model, name, client_timeout=TIMEOUT_S),
            "infer": refusal(tc.infer, name, [bytes_input(RED)], client_timeout=TIMEOUT_S),
            "metadata": refusal(tc.get_model_metadata, name, client_timeout=TIMEOUT_S),
            "config": refusal(tc.get_model_config, name, client_timeout=TIMEOUT_S),
            "classify": classify_refusal(ours, name),
        }
        for door, (code, message) in doors.items():
            assert code in REFUSED, f"{door} {name!r}: {code} {message}"
            assert len(message) <= MAX_MESSAGE_CHARS, f"{door} {name!r}: {len(message)} chars"
            leaked = str(tmp) in message and str(tmp) not in name  # not the client's own
            assert not leaked, f"{door} {name!r} leaks a path: {message}"
        # a malformed name is refused as such (a link out of the repository likewise, or as a
        # model with no version inside it)
        assert doors["load"][0] == "INVALID_ARGUMENT" or name in LINKS, (name, doors["load"])
        assert not tc.is_model_ready(name, client_timeout=TIMEOUT_S)
        tried += 1
    assert tried == len(names) >= 60
    print(
        f"traversal: {tried} names refused at {len(doors)} doors each"
    )  # the figure SECURITY.md quotes

    # the outside model never loaded, nor shows anywhere
    index = tc.get_model_repository_index(as_json=True, client_timeout=TIMEOUT_S)
    assert {m["name"] for m in index.get("models", [])} == {"tiny", "broken"}
    listed = ours.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT_S)  # type: ignore[attr-defined]
    assert [m.name for m in listed.models] == ["tiny"]
    assert metric_model_labels(server) <= {"tiny", "broken", ""}
    log = server.log()
    assert f"model {OUTSIDE_MODEL} version" not in log  # never loaded under its own name
    assert log.count(" loaded in ") == 1  # tiny only
    # the server still serves
    assert (
        ours.Classify(  # type: ignore[attr-defined]
            pb.ClassifyRequest(model="tiny", images=[pb.Image(encoded=RED)]), timeout=TIMEOUT_S
        )
        .results[0]
        .top[0]
        .label
        == "red"
    )
    assert server.proc.poll() is None


def test_startup_list_refuses_traversal_names(server: ServerProcess) -> None:
    """The --load-model names out of the repository were refused at start (logged), tiny
    loaded."""
    log = server.log()
    for name in STARTUP_NAMES:
        assert f"model {name}: " in log, name
    assert "is not a plain name" in log and "links outside the model repository" in log


def test_load_errors_and_index_reasons_carry_no_absolute_path(
    clients: tuple[triton.InferenceServerClient, object], tmp: Path
) -> None:
    tc, _ = clients
    code, message = refusal(tc.load_model, "broken", client_timeout=TIMEOUT_S)
    assert code == "FAILED_PRECONDITION"
    assert "failed to load" in message
    index = tc.get_model_repository_index(as_json=True, client_timeout=TIMEOUT_S)
    (row,) = [m for m in index["models"] if m["name"] == "broken"]
    assert row["state"] == "FAILED" and row["reason"]
    for text in (message, row["reason"]):
        assert str(tmp) not in text and str(tmp.resolve()) not in text, text
        assert "/tmp" not in text and "/home" not in text, text
    assert "broken/1/model.onnx" in row["reason"]  # relative to the repository root


def test_a_megabyte_model_name_is_not_echoed_back(
    clients: tuple[triton.InferenceServerClient, object],
) -> None:
    """A 1 MB name is refused with a short message (before the fix the whole name came back
    and the client saw RESOURCE_EXHAUSTED on the oversized trailer instead)."""
    tc, ours = clients
    name = "m" * 1_000_000
    for code, message in (
        classify_refusal(ours, name),
        refusal(tc.infer, name, [bytes_input(RED)], client_timeout=TIMEOUT_S),
        refusal(tc.load_model, name, client_timeout=TIMEOUT_S),
    ):
        assert code in REFUSED, (code, message[:200])
        assert len(message) <= MAX_MESSAGE_CHARS
        assert "characters cut" in message


def bytes_input(data: bytes) -> triton.InferInput:
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_))
    return tensor
