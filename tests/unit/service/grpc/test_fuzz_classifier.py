"""Property-based tests of our API's tensor converter (imgclf.grpc.classifier.tensor_from_pb).

Any Tensor message (shape, dtype value, data length) becomes an array of exactly its shape, or
raises InvalidInput; well-formed tensors round-trip bit for bit (FLOAT16 widened exactly).
"""

from __future__ import annotations

import asyncio
import math
import tracemalloc
from pathlib import Path

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf.dataplane import ImageInput
from imgclf.errors import InvalidInput
from imgclf.grpc.classifier import ImageClassifierServicer, image_from_pb, tensor_from_pb
from tests.unit.service.support import make_core, serving

FUZZ = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
INT64 = st.integers(-(2**63), 2**63 - 1)
DIMS = st.one_of(st.integers(-2, 6), INT64)
DTYPES = st.one_of(st.sampled_from([0, pb.FLOAT32, pb.FLOAT16, pb.UINT8]), st.integers(-5, 99))
ITEMSIZE = {pb.FLOAT32: 4, pb.FLOAT16: 2, pb.UINT8: 1}


@st.composite
def tensors(draw: st.DrawFn) -> pb.Tensor:
    """Tensor messages of any shape and dtype value; the data is often exactly the right
    length (so the conversion itself runs), otherwise anything."""
    shape = draw(st.lists(DIMS, max_size=5))
    dtype = draw(DTYPES)
    size = math.prod(shape) * ITEMSIZE.get(dtype, 4) if all(d > 0 for d in shape) else -1
    if 0 <= size <= 4096 and draw(st.booleans()):
        data = draw(st.binary(min_size=size, max_size=size))
    else:
        data = draw(st.binary(max_size=256))
    return pb.Tensor(shape=shape, dtype=dtype, data=data)


@FUZZ
@given(tensor=tensors(), index=st.integers(0, 100))
def test_any_tensor_message_converts_or_raises_invalid_input(tensor: pb.Tensor, index: int) -> None:
    try:
        array = tensor_from_pb(tensor, index)
    except InvalidInput as exc:
        assert f"image {index}" in str(exc)
        return
    assert array.shape == tuple(tensor.shape)
    assert array.dtype in (np.float32, np.uint8)
    assert array.dtype == (np.uint8 if tensor.dtype == pb.UINT8 else np.float32)


PB_DTYPE = {np.dtype("<f4"): pb.FLOAT32, np.dtype("<f2"): pb.FLOAT16, np.dtype("u1"): pb.UINT8}


@FUZZ
@given(
    array=st.sampled_from(sorted(PB_DTYPE, key=str)).flatmap(
        lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6))
    )
)
def test_well_formed_tensors_round_trip(array: np.ndarray) -> None:
    message = pb.Tensor(shape=array.shape, dtype=PB_DTYPE[array.dtype], data=array.tobytes())
    out = tensor_from_pb(message, 0)
    expected = array if array.dtype == np.uint8 else array.astype(np.float32)
    assert out.shape == array.shape and out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)  # NaN == NaN here; widening is exact


@FUZZ
@given(
    kind=st.sampled_from(["encoded", "tensor", "none"]),
    encoded=st.binary(max_size=64),
    tensor=tensors(),
)
def test_any_image_message_becomes_one_input_form(
    kind: str, encoded: bytes, tensor: pb.Tensor
) -> None:
    message = {"encoded": pb.Image(encoded=encoded), "tensor": pb.Image(tensor=tensor)}.get(
        kind, pb.Image()
    )
    try:
        image = image_from_pb(message, 3)
    except InvalidInput as exc:
        assert kind != "encoded" and "image 3" in str(exc)
        return
    assert isinstance(image, ImageInput)
    forms = [f for f in (image.encoded, image.tensor, image.pixels) if f is not None]
    assert len(forms) == 1
    if kind == "encoded":
        assert image.encoded == encoded


class AbortingContext:
    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


def test_too_many_images_are_refused_before_conversion(tiny_repo: Path) -> None:
    """Work is bounded by the image limit, not by what the client sends: 100000 empty images
    (400 KB on the wire) must be refused without converting each one. (Converting them all
    blocks the event loop for seconds: a 64 MiB message holds 16.7M images.)"""
    request = pb.ClassifyRequest(model="tiny", images=[pb.Image(encoded=b"")] * 100_000)
    context = AbortingContext()
    core = make_core(tiny_repo, max_images_per_request=4)

    async def main() -> int:
        async with serving(core):
            servicer = ImageClassifierServicer(core)
            tracemalloc.start()
            try:
                await servicer.Classify(request, context)
            except grpc.aio.AbortError:
                pass
            finally:
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            return peak

    peak = asyncio.run(main())
    assert context.aborted[0] is grpc.StatusCode.INVALID_ARGUMENT
    assert "more than the limit of 4" in context.aborted[1]
    assert peak < 256 * 1024, f"refusing it allocated {peak} bytes"
