"""imgclf.grpc.errors: the one mapping from domain errors to gRPC status codes."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from imgclf.errors import (
    MAX_MESSAGE_CHARS,
    DeadlineExceeded,
    ImgclfError,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
)
from imgclf.grpc.errors import GENERIC_INTERNAL, maps_errors, public_message, status_of


class FakeContext:
    """The part of grpc.aio.ServicerContext that maps_errors uses: abort raises."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
        (ModelNotFound, grpc.StatusCode.NOT_FOUND),
        (ModelNotReady, grpc.StatusCode.UNAVAILABLE),
        (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
        (InferenceFailed, grpc.StatusCode.INTERNAL),
        (ImgclfError, grpc.StatusCode.INTERNAL),
    ],
)
def test_status_of(error, code):
    assert status_of(error("x")) is code


@pytest.mark.parametrize("error", [InvalidInput, ModelNotFound, ModelNotReady, QueueFull])
def test_public_message_passes_client_errors(error):
    assert public_message(error("image 2: tensor shape [3] is wrong")) == (
        "image 2: tensor shape [3] is wrong"
    )


@pytest.mark.parametrize("error", [InferenceFailed, ImgclfError])
def test_public_message_hides_internal_details(error):
    msg = public_message(error("CUDA OOM at /opt/secret/path"))
    assert msg == GENERIC_INTERNAL
    assert "secret" not in msg


class Servicer:
    def __init__(self, raises: BaseException | None) -> None:
        self.raises = raises

    @maps_errors
    async def Method(self, request, context):
        if self.raises is not None:
            raise self.raises
        return ("reply", request)


def call(raises: BaseException | None) -> tuple[object, FakeContext]:
    context = FakeContext()

    async def main():
        return await Servicer(raises).Method("req", context)

    try:
        reply = asyncio.run(main())
    except grpc.aio.AbortError:
        reply = None
    return reply, context


def test_maps_errors_passes_replies():
    reply, context = call(None)
    assert reply == ("reply", "req")
    assert context.aborted is None


def test_maps_errors_aborts_with_the_code():
    _, context = call(QueueFull("queue is full (3 images waiting)"))
    assert context.aborted == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "queue is full (3 images waiting)",
    )


def test_maps_errors_hides_internal(caplog):
    _, context = call(InferenceFailed("engine said: secret"))
    assert context.aborted == (grpc.StatusCode.INTERNAL, GENERIC_INTERNAL)
    assert "engine said: secret" in caplog.text  # logged, not sent


def test_maps_errors_unexpected_exception(caplog):
    _, context = call(KeyError("secret key"))
    assert context.aborted == (grpc.StatusCode.INTERNAL, GENERIC_INTERNAL)
    assert "failed unexpectedly" in caplog.text


def test_public_message_is_redacted():
    """A client never gets an absolute server path nor its megabyte of input echoed back."""
    msg = public_message(ModelNotFound(f"model {'n' * 100_000!r} failed in /srv/m/1/model.onnx"))
    assert len(msg) <= MAX_MESSAGE_CHARS
    assert "/srv" not in msg
    assert msg.endswith("failed in .../model.onnx")
