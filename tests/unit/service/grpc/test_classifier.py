"""imgclf.grpc.classifier: protobuf <-> core conversions, and the servicer over a tiny model."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf.dataplane import Classification, ClassifyResult, ClassScore, ImageInput
from imgclf.errors import InvalidInput
from imgclf.grpc.classifier import (
    ImageClassifierServicer,
    image_from_pb,
    response_to_pb,
    tensor_from_pb,
)
from tests.tiny_model import LABELS
from tests.unit.service.support import TINY_SIZE, make_core, make_repo, serving, solid


def tensor_pb(array: np.ndarray, dtype: int = pb.FLOAT32, shape=None) -> pb.Tensor:
    return pb.Tensor(
        shape=list(array.shape if shape is None else shape), dtype=dtype, data=array.tobytes()
    )


# --- tensor_from_pb -------------------------------------------------------------------------


def test_tensor_round_trip():
    src = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
    out = tensor_from_pb(tensor_pb(src), 0)
    assert out.dtype == np.float32
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, src)
    assert not out.flags.writeable  # a zero-copy view over the message bytes


@pytest.mark.parametrize("delta", [-4, -1, 1, 4])
def test_tensor_wrong_byte_length(delta):
    src = np.zeros((3, 4, 5), dtype=np.float32)
    msg = tensor_pb(src)
    msg.data = msg.data[:delta] if delta < 0 else msg.data + b"\x00" * delta
    with pytest.raises(InvalidInput, match=r"image 2: tensor shape \[3, 4, 5\] needs 240 bytes"):
        tensor_from_pb(msg, 2)


def test_float16_tensor_is_widened_to_float32():
    src = np.random.default_rng(1).random((3, 4, 5)).astype(np.float16)
    out = tensor_from_pb(tensor_pb(src, dtype=pb.FLOAT16), 0)
    assert out.dtype == np.float32
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, src.astype(np.float32))


def test_uint8_tensor_stays_uint8_pixels():
    src = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    out = tensor_from_pb(tensor_pb(src, dtype=pb.UINT8), 0)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, src)


@pytest.mark.parametrize(
    ("dtype", "itemsize", "name"), [(pb.FLOAT16, 2, "float16"), (pb.UINT8, 1, "uint8")]
)
def test_byte_length_checked_per_dtype(dtype, itemsize, name):
    msg = pb.Tensor(shape=[3, 4, 5], dtype=dtype, data=b"\x00" * (60 * 4))  # float32-sized
    with pytest.raises(InvalidInput, match=f"needs {60 * itemsize} bytes of {name}, got 240"):
        tensor_from_pb(msg, 0)


def test_tensor_unsupported_dtype():
    msg = tensor_pb(np.zeros((2, 2), dtype=np.uint8), dtype=pb.DATA_TYPE_UNSPECIFIED)
    with pytest.raises(
        InvalidInput, match="UNSPECIFIED is not supported; send FLOAT32, FLOAT16 or UINT8"
    ):
        tensor_from_pb(msg, 0)


def test_tensor_unknown_dtype_value():
    msg = pb.Tensor(shape=[1], dtype=99, data=b"\x00" * 4)
    with pytest.raises(InvalidInput, match=r"dtype \? is not supported"):
        tensor_from_pb(msg, 0)


@pytest.mark.parametrize("shape", [[3, 0, 4], [3, -1, 4], [-3, -4]])
def test_tensor_non_positive_dims(shape):
    msg = pb.Tensor(shape=shape, dtype=pb.FLOAT32, data=b"")
    with pytest.raises(InvalidInput, match="non-positive dim"):
        tensor_from_pb(msg, 1)


@pytest.mark.parametrize("shape", [[2**32, 2**32], [2**62, 4], [2**31, 2**31, 4]])
def test_tensor_huge_shape_is_invalid_input(shape):
    """A shape whose element count overflows int64 must be refused as INVALID_ARGUMENT, not
    slip through the byte-length check and fail with a ValueError (reported as INTERNAL)."""
    msg = pb.Tensor(shape=shape, dtype=pb.FLOAT32, data=b"")
    with pytest.raises(InvalidInput):
        tensor_from_pb(msg, 0)


# --- image_from_pb --------------------------------------------------------------------------


def test_image_with_neither_field():
    with pytest.raises(InvalidInput, match="image 3 has neither encoded bytes nor a tensor"):
        image_from_pb(pb.Image(), 3)


def test_image_encoded():
    assert image_from_pb(pb.Image(encoded=b"\x89PNG..."), 0) == ImageInput(encoded=b"\x89PNG...")


def test_image_tensor():
    src = np.ones((3, 2, 2), dtype=np.float32)
    img = image_from_pb(pb.Image(tensor=tensor_pb(src)), 0)
    assert img.encoded is None
    np.testing.assert_array_equal(img.tensor, src)


def test_image_float16_tensor():
    src = np.ones((3, 2, 2), dtype=np.float16)
    img = image_from_pb(pb.Image(tensor=tensor_pb(src, dtype=pb.FLOAT16)), 0)
    assert img.pixels is None
    assert img.tensor is not None
    assert img.tensor.dtype == np.float32


def test_image_uint8_tensor_is_pixels():
    src = np.full((3, 2, 2), 200, dtype=np.uint8)
    img = image_from_pb(pb.Image(tensor=tensor_pb(src, dtype=pb.UINT8)), 0)
    assert img.tensor is None
    assert img.encoded is None
    np.testing.assert_array_equal(img.pixels, src)


def test_image_tensor_errors_name_the_image():
    bad = pb.Image(tensor=pb.Tensor(shape=[2], dtype=pb.FLOAT32, data=b"\x00"))
    with pytest.raises(InvalidInput, match=r"^image 7: "):
        image_from_pb(bad, 7)


# --- response_to_pb -------------------------------------------------------------------------


def test_response_round_trip():
    probs = [np.array([0.7, 0.2, 0.1], np.float32), np.array([0.05, 0.15, 0.8], np.float32)]
    result = ClassifyResult(
        model="resnet",
        version=4,
        results=[
            Classification(probs[0], [ClassScore(0, "cat", 0.7), ClassScore(1, "dog", 0.2)]),
            Classification(probs[1], [ClassScore(2, "bird", 0.8)]),
        ],
    )
    wire = response_to_pb(result).SerializeToString()
    back = pb.ClassifyResponse.FromString(wire)
    assert (back.model, back.version) == ("resnet", 4)
    assert len(back.results) == 2
    for got, want in zip(back.results, result.results, strict=True):
        np.testing.assert_allclose(list(got.probabilities), want.probabilities, rtol=1e-7)
        assert [(s.index, s.label) for s in got.top] == [(s.index, s.label) for s in want.top]
        assert [s.probability for s in got.top] == pytest.approx([s.probability for s in want.top])


# --- the servicer over a real tiny model ----------------------------------------------------


class FakeContext:
    def __init__(self, remaining: float | None = None) -> None:
        self.remaining = remaining
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float | None:
        return self.remaining

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


def servicer_call(repo, method: str, request, context: FakeContext):
    core = make_core(repo)

    async def main():
        async with serving(core):
            return await getattr(ImageClassifierServicer(core), method)(request, context)

    return asyncio.run(main())


def test_classify_servicer(tiny_repo):
    tensor = np.zeros((3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
    tensor[2] = 1.0
    request = pb.ClassifyRequest(
        model="tiny",
        top_k=2,
        images=[pb.Image(encoded=solid((250, 10, 10))), pb.Image(tensor=tensor_pb(tensor))],
    )
    reply = servicer_call(tiny_repo, "Classify", request, FakeContext(remaining=30.0))
    assert (reply.model, reply.version) == ("tiny", 1)
    assert [r.top[0].label for r in reply.results] == ["red", "blue"]
    assert all(len(r.top) == 2 for r in reply.results)
    assert all(sum(r.probabilities) == pytest.approx(1.0, abs=1e-5) for r in reply.results)


def test_classify_servicer_takes_every_tensor_dtype(tiny_repo):
    """FLOAT32 and FLOAT16 tensors (preprocessed) and UINT8 pixels (normalised by the server)
    of the same image give the same answer."""
    pixels = np.zeros((3, TINY_SIZE, TINY_SIZE), dtype=np.uint8)
    pixels[1] = 255  # green
    tensor = pixels.astype(np.float32) / 255  # the tiny model: mean 0, std 1
    request = pb.ClassifyRequest(
        model="tiny",
        images=[
            pb.Image(tensor=tensor_pb(tensor)),
            pb.Image(tensor=tensor_pb(tensor.astype(np.float16), dtype=pb.FLOAT16)),
            pb.Image(tensor=tensor_pb(pixels, dtype=pb.UINT8)),
        ],
    )
    reply = servicer_call(tiny_repo, "Classify", request, FakeContext(remaining=30.0))
    assert [r.top[0].label for r in reply.results] == ["green"] * 3
    first = list(reply.results[0].probabilities)
    for r in reply.results[1:]:
        assert list(r.probabilities) == pytest.approx(first, abs=1e-6)


def test_classify_servicer_maps_invalid_input(tiny_repo):
    request = pb.ClassifyRequest(images=[pb.Image()])
    context = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        servicer_call(tiny_repo, "Classify", request, context)
    assert context.aborted is not None
    code, details = context.aborted
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "neither encoded bytes nor a tensor" in details


def test_classify_servicer_maps_a_non_finite_float16_tensor(tiny_repo):
    tensor = np.zeros((3, TINY_SIZE, TINY_SIZE), dtype=np.float16)
    tensor[0, 0, 0] = np.inf
    request = pb.ClassifyRequest(images=[pb.Image(tensor=tensor_pb(tensor, dtype=pb.FLOAT16))])
    context = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        servicer_call(tiny_repo, "Classify", request, context)
    assert context.aborted is not None
    code, details = context.aborted
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "NaN or infinite" in details


def test_list_models_servicer(tiny_repo):
    reply = servicer_call(tiny_repo, "ListModels", pb.ListModelsRequest(), FakeContext())
    (info,) = reply.models
    assert info.name == "tiny"
    assert list(info.versions) == [1]
    assert list(info.labels) == LABELS
    assert list(info.input_shape) == [3, TINY_SIZE, TINY_SIZE]
    assert info.provider == "CPUExecutionProvider"
    assert info.max_batch_size == 8
    assert dict(info.metadata) == {
        "architecture": "tiny-test",
        "precision": "fp32",
        "served_file": "model.onnx",
    }


def test_list_models_servicer_lists_every_served_version(tmp_path):
    make_repo(tmp_path, version=1)
    make_repo(tmp_path, version=2)
    make_repo(tmp_path, name="other", version=5)
    (tmp_path / "tiny" / "config.json").write_text('{"version_policy": {"all": true}}')
    reply = servicer_call(tmp_path, "ListModels", pb.ListModelsRequest(), FakeContext())
    assert [(m.name, list(m.versions)) for m in reply.models] == [("other", [5]), ("tiny", [2, 1])]
