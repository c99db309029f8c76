"""Property-based tests of the Open Inference Protocol converters (imgclf.grpc.oip_tensors).

Arbitrary BYTES payloads, tensors (datatype, shape, raw or typed contents) and whole requests
either convert to well-formed core inputs or raise InvalidInput; BYTES elements round-trip.
"""

from __future__ import annotations

import math
import struct
import tracemalloc

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgclf._generated.inference import grpc_service_pb2 as pb
from imgclf.bytestensor import serialize_bytes_elements
from imgclf.errors import InvalidInput
from imgclf.grpc.oip_tensors import (
    IMAGE_INPUT,
    decode_tensor,
    parse_bytes_elements,
    request_images,
)

FUZZ = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
INPUT_NAME = "input"
MAX_BATCH = 4
DATATYPES = ["FP32", "FP16", "UINT8", "BYTES", "INT32", "FP64", "BOOL", "", "fp32"]
ITEMSIZE = {"FP32": 4, "FP16": 2, "UINT8": 1}
DIMS = st.one_of(st.integers(-2, 6), st.integers(-(2**63), 2**63 - 1))
ELEMENTS = st.lists(st.binary(max_size=40), max_size=8)
Tensor = pb.ModelInferRequest.InferInputTensor


@st.composite
def length_prefixed(draw: st.DrawFn) -> bytes:
    """Mostly well-formed BYTES payloads, with a tail of garbage or a lying length."""
    raw = serialize_bytes_elements(draw(ELEMENTS))
    tail = draw(
        st.one_of(
            st.just(b""),
            st.binary(max_size=8),
            st.integers(0, 2**32 - 1).map(lambda n: struct.pack("<I", n)),
        )
    )
    return raw + tail  # fmt: skip


@FUZZ
@given(raw=st.one_of(st.binary(max_size=256), length_prefixed()))
def test_any_bytes_payload_parses_or_raises_invalid_input(raw: bytes) -> None:
    try:
        elements = parse_bytes_elements(raw)
    except InvalidInput as exc:
        assert exc.reason == "bad_tensor"
        return
    assert serialize_bytes_elements(elements) == raw  # parsing is lossless


@FUZZ
@given(elements=ELEMENTS)
def test_bytes_elements_round_trip(elements: list[bytes]) -> None:
    assert parse_bytes_elements(serialize_bytes_elements(elements)) == elements


@st.composite
def tensors(draw: st.DrawFn, name: str = INPUT_NAME) -> tuple[Tensor, bytes | None]:
    """An input tensor of any datatype and shape with raw or typed contents, often of
    exactly the right size so the conversion itself runs."""
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(st.lists(DIMS, max_size=5))
    tensor = Tensor(name=name, datatype=datatype, shape=shape)
    count = math.prod(shape) if all(d > 0 for d in shape) else -1
    exact = 0 <= count <= 512 and draw(st.booleans())
    if draw(st.booleans()):  # raw_input_contents
        size = count * ITEMSIZE.get(datatype, 4) if exact else draw(st.integers(0, 64))
        return tensor, draw(st.binary(min_size=size, max_size=size))
    n = count if exact else draw(st.integers(0, 16))
    field = draw(st.sampled_from(["fp32_contents", "uint_contents", "int_contents",
                                  "bytes_contents"]))  # fmt: skip
    if field == "fp32_contents":
        values = draw(st.lists(st.floats(width=32), min_size=n, max_size=n))
    elif field == "uint_contents":
        values = draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n))
    elif field == "int_contents":
        values = draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=n, max_size=n))
    else:
        values = draw(st.lists(st.binary(max_size=8), min_size=n, max_size=n))
    getattr(tensor.contents, field).extend(values)
    return tensor, None


@FUZZ
@given(case=tensors())
def test_any_tensor_decodes_or_raises_invalid_input(case: tuple[Tensor, bytes | None]) -> None:
    tensor, raw = case
    try:
        array = decode_tensor(tensor, raw)
    except InvalidInput as exc:
        assert exc.reason in {"bad_dtype", "bad_shape", "bad_tensor"}
        return
    assert array.shape == tuple(tensor.shape)
    assert array.dtype == (np.uint8 if tensor.datatype == "UINT8" else np.float32)


@st.composite
def requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """Requests of 0-2 inputs named like the model input, the image input or neither,
    with raw contents for some, none or too many of them."""
    request = pb.ModelInferRequest(model_name="tiny")
    raws = []
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from([INPUT_NAME, IMAGE_INPUT, "other"]))
        if name == IMAGE_INPUT and draw(st.booleans()):
            images = draw(st.lists(st.binary(max_size=16), max_size=6))
            shape = draw(st.sampled_from([[len(images)], [len(images), 1], [len(images), 2],
                                          [max(len(images) - 1, 0)]]))  # fmt: skip
            datatype = draw(st.sampled_from(["BYTES", "FP32"]))
            tensor = Tensor(name=name, datatype=datatype, shape=shape)
            raw = serialize_bytes_elements(images) if draw(st.booleans()) else None
            if raw is None:
                tensor.contents.bytes_contents.extend(images)
        else:
            tensor, raw = draw(tensors(name))
        request.inputs.append(tensor)
        if raw is not None:
            raws.append(raw)
    if draw(st.booleans()):
        raws += draw(st.lists(st.binary(max_size=8), max_size=2))
    request.raw_input_contents.extend(raws)
    return request


@FUZZ
@given(request=requests())
def test_any_request_gives_at_most_max_batch_inputs_or_invalid_input(
    request: pb.ModelInferRequest,
) -> None:
    try:
        images = request_images(request, INPUT_NAME, MAX_BATCH)
    except InvalidInput as exc:
        assert str(exc)
        return
    assert 1 <= len(images) <= MAX_BATCH
    for image in images:
        forms = [f for f in (image.encoded, image.tensor, image.pixels) if f is not None]
        assert len(forms) == 1
        array = image.tensor if image.tensor is not None else image.pixels
        if array is not None:
            assert array.ndim == 3
            assert array.dtype == (np.float32 if image.tensor is not None else np.uint8)


@FUZZ
@given(images=st.lists(st.binary(max_size=64), min_size=1, max_size=MAX_BATCH),
       as_raw=st.booleans(), column=st.booleans())  # fmt: skip
def test_encoded_images_arrive_unchanged(images: list[bytes], as_raw: bool, column: bool) -> None:
    shape = [len(images), 1] if column else [len(images)]
    request = pb.ModelInferRequest(model_name="tiny")
    tensor = request.inputs.add(name=IMAGE_INPUT, datatype="BYTES", shape=shape)
    if as_raw:
        request.raw_input_contents.append(serialize_bytes_elements(images))
    else:
        tensor.contents.bytes_contents.extend(images)
    assert [i.encoded for i in request_images(request, INPUT_NAME, MAX_BATCH)] == images


def test_a_bytes_input_is_not_parsed_past_the_batch_limit() -> None:
    """Work is bounded by what the model takes, not by what the client sends: a BYTES input
    declared [1] that carries 100000 empty elements (400 KB on the wire) must be refused without
    materialising the elements. (Parsing them all blocks the event loop for seconds per
    request: a 64 MiB message is 16.7M elements.)"""
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name=IMAGE_INPUT, datatype="BYTES", shape=[1])
    raw = bytes(4 * 100_000)
    request.raw_input_contents.append(raw)
    tracemalloc.start()
    try:
        request_images(request, INPUT_NAME, MAX_BATCH)
    except InvalidInput as exc:
        assert exc.reason == "bad_tensor"
    else:
        raise AssertionError("100000 elements accepted as a batch of 1")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # Reading the field copies the raw bytes once (protobuf gives no zero-copy view); parsing
    # the 100000 elements would add millions of bytes of small objects on top.
    assert peak < len(raw) + 256 * 1024, f"refusing it allocated {peak} bytes"
