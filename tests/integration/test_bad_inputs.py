"""Every row of tests/data/bad_inputs.md against one real server with small limits.

Each row is sent through the API it names: ours (raw imgclf.v1 messages on a grpc channel) or
the Open Inference Protocol (tritonclient where it can build the request, our own generated
inference messages where it cannot: malformed tensors, lying lengths). After each row a good
request through each API must be answered with the right label; at the end the server is still
running, has logged no unmapped exception, and counted the rejects by reason.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import random
import re
import socket
import struct
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from imgclf._generated.imgclf.v1 import image_classifier_pb2 as pb
from imgclf._generated.imgclf.v1 import image_classifier_pb2_grpc as pb_grpc
from imgclf._generated.inference import grpc_service_pb2 as oip_pb
from imgclf._generated.inference import grpc_service_pb2_grpc as oip_grpc
from imgclf.bytestensor import serialize_bytes_elements
from imgclf.client.bench.launcher import ServerProcess, start_server
from imgclf.client.channel import open_channel
from imgclf.errors import MAX_MESSAGE_CHARS
from imgclf.modelmeta import ModelMetadata
from tests.images import encode
from tests.tiny_model import make_tiny_model
from tests.unit.service.support import png_declaring

CATALOGUE = Path(__file__).resolve().parents[1] / "data" / "bad_inputs.md"
SIZE = 16
MAX_PIXELS = 4_000_000
MAX_IMAGES = 4
MAX_MESSAGE = 1 << 20
MEMORY_BUDGET = 32 << 20
MAX_BATCH = 4
MAX_TOP_K = 10
TIMEOUT_S = 30.0

RED = (220, 20, 30)
GREEN = (20, 200, 40)
BLUE = (10, 30, 240)


# --- the catalogue ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    case: str
    api: str
    input: str
    code: str
    expect: str
    reason: str

    @property
    def id(self) -> str:
        return f"{self.api}:{self.case}"


def load_catalogue() -> list[Row]:
    """The table rows of bad_inputs.md (every table in it has the same six columns)."""
    rows = []
    for line in CATALOGUE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 6 or cells[0] in ("case", "---"):
            continue
        rows.append(Row(*cells))
    return rows


ROWS = load_catalogue()


# --- models ------------------------------------------------------------------------------------


def make_luma_model(path: Path) -> Path:
    """A 16x16 classifier answering "bright" when the mean intensity is above one half."""
    weight = np.tile(np.array([[-8.0, 8.0]], dtype=np.float32) / 3.0, (3, 1))
    bias = np.array([4.0, -4.0], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        ],
        "luma",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = ModelMetadata(
        labels=["dark", "bright"], input_size=(SIZE, SIZE), resize_size=SIZE,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
    )  # fmt: skip
    helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("bad-inputs-repo")
    make_tiny_model(repo / "tiny" / "1" / "model.onnx", size=SIZE)
    make_luma_model(repo / "luma" / "1" / "model.onnx")
    make_tiny_model(repo / "flat" / "1" / "model.onnx", size=SIZE, head="flatten")
    proc = start_server(
        repo, tmp_path_factory.mktemp("bad-inputs-server"),
        "--max-pixels", str(MAX_PIXELS),
        "--max-images-per-request", str(MAX_IMAGES),
        "--max-message-bytes", str(MAX_MESSAGE),
        "--memory-budget-bytes", str(MEMORY_BUDGET),
        "--max-batch-size", str(MAX_BATCH),
        "--max-top-k", str(MAX_TOP_K),
        "--max-queue-delay-ms", "1",
        "--instances", "1",
        "--intra-op-threads", "1",
        "--preprocess-threads", "2",
        "--http-read-timeout-s", "1",
    )  # fmt: skip
    yield proc
    proc.stop()


# --- payloads ------------------------------------------------------------------------------


def solid(rgb: tuple[int, int, int], fmt: str, size: tuple[int, int] = (24, 20)) -> bytes:
    return encode(Image.new("RGB", size, rgb), fmt)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def corrupted(data: bytes, at: int | None = None, n: int = 16) -> bytes:
    """`n` bytes inverted from `at` (default: a third of the way in, in the compressed data)."""
    out = bytearray(data)
    at = len(data) // 3 if at is None else at
    for i in range(at, at + n):
        out[i] ^= 0xFF
    return bytes(out)


def webp_bad_frame_header() -> bytes:
    data = noisy_red("WEBP")
    return corrupted(data, at=data.find(b"VP8 ") + 8, n=4)


def jpeg_bad_huffman() -> bytes:
    data = noisy_red("JPEG")
    return corrupted(data, at=data.find(b"\xff\xc4") + 4)


def noisy_red(fmt: str, **params: object) -> bytes:
    """A red photo-like image with texture, so its compressed data is long enough to corrupt."""
    rng = np.random.default_rng(7)
    pixels = np.clip(np.array(RED) + rng.normal(0, 25, (64, 64, 3)), 0, 255).astype(np.uint8)
    return encode(pixels, fmt, **params)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_rgb16(width: int, height: int, rgb16: tuple[int, int, int]) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG, written by hand (Pillow cannot write one)."""
    row = b"\x00" + struct.pack(">HHH", *rgb16) * width
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(row * height))
        + png_chunk(b"IEND", b"")
    )


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (20, 20), c) for c in (RED, BLUE)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(solid(RED, "JPEG", (8, 8)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_declaring(width: int, height: int) -> bytes:
    data = bytearray(solid(RED, "GIF", (8, 8)))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def dds_bad_pixel_format() -> bytes:
    data = bytearray(solid(RED, "DDS", (8, 8)))
    data[80:84] = b"\x00\x00\x00\x00"  # DDS_PIXELFORMAT.dwFlags
    return bytes(data)


def palette_transparent() -> bytes:
    img = Image.new("RGB", (20, 20), GREEN).convert("P")
    return encode(img, "PNG", transparency=0)


NOT_EXIF = b"Exif\x00\x00this is not TIFF data"

# case -> (model, encoded bytes). Built lazily: some need codecs only a few rows use.
ENCODED: dict[str, Callable[[], tuple[str, bytes]]] = {
    "empty-bytes": lambda: ("tiny", b""),
    "random-bytes": lambda: ("tiny", random.Random(0).randbytes(4096)),
    "jpeg-truncated": lambda: ("tiny", truncated(noisy_red("JPEG"))),
    "jpeg-corrupt": lambda: ("tiny", jpeg_bad_huffman()),
    "jpeg-corrupt-scan": lambda: ("tiny", corrupted(noisy_red("JPEG"))),
    "png-truncated": lambda: ("tiny", truncated(noisy_red("PNG"))),
    "png-corrupt": lambda: ("tiny", corrupted(noisy_red("PNG"))),
    "webp-truncated": lambda: ("tiny", truncated(noisy_red("WEBP"))),
    "webp-corrupt": lambda: ("tiny", webp_bad_frame_header()),
    "bomb-png-declared": lambda: ("tiny", png_declaring(100_000, 100_000)),
    "bomb-png-real": lambda: ("tiny", encode(Image.new("L", (2100, 2000), 0), "PNG")),
    "rgba-over-memory-budget": lambda: (
        "tiny",
        encode(Image.new("RGBA", (2000, 2000), (*RED, 128)), "PNG"),
    ),
    "bomb-jpeg-declared": lambda: ("tiny", jpeg_declaring(65535, 65535)),
    "bomb-gif-declared": lambda: ("tiny", gif_declaring(65535, 65535)),
    "bomb-webp-real": lambda: (
        "tiny",
        encode(Image.new("L", (2100, 2000), 0), "WEBP", lossless=True),
    ),
    "eps-postscript": lambda: (
        "tiny",
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n1 0 0 setrgbcolor\n"
        b"0 0 16 16 rectfill\nshowpage\n%%EOF\n",
    ),
    "dds-bad-pixel-format": lambda: ("tiny", dds_bad_pixel_format()),
    "tiff": lambda: ("tiny", solid(RED, "TIFF")),
    "png-corrupt-exif": lambda: (
        "tiny",
        encode(Image.new("RGB", (20, 20), RED), "PNG", exif=NOT_EXIF),
    ),
    "webp-corrupt-exif": lambda: (
        "tiny",
        encode(Image.new("RGB", (20, 20), RED), "WEBP", exif=NOT_EXIF),
    ),
    "gif-animated": lambda: ("tiny", animated("GIF")),
    "png-animated": lambda: ("tiny", animated("PNG")),
    "webp-animated": lambda: ("tiny", animated("WEBP")),
    "jpeg-cmyk": lambda: ("tiny", encode(Image.new("RGB", (20, 20), RED).convert("CMYK"), "JPEG")),
    "png-gray-8bit": lambda: ("luma", encode(Image.new("L", (20, 20), 30), "PNG")),
    "png-gray-16bit-bright": lambda: (
        "luma",
        encode(Image.fromarray(np.full((20, 20), 60000, np.uint16)), "PNG"),
    ),
    "png-gray-16bit-dark": lambda: (
        "luma",
        encode(Image.fromarray(np.full((20, 20), 3000, np.uint16)), "PNG"),
    ),
    "png-rgb-16bit": lambda: ("tiny", png_rgb16(20, 20, (56000, 5000, 7000))),
    "png-gray-alpha": lambda: ("luma", encode(Image.new("LA", (20, 20), (220, 100)), "PNG")),
    "png-rgba": lambda: ("tiny", encode(Image.new("RGBA", (20, 20), (*GREEN, 128)), "PNG")),
    "png-palette": lambda: ("tiny", encode(Image.new("RGB", (20, 20), BLUE).convert("P"), "PNG")),
    "png-palette-transparent": lambda: ("tiny", palette_transparent()),
    "png-bilevel": lambda: ("luma", encode(Image.new("1", (20, 20), 1), "PNG")),
}


# --- how a row is sent ---------------------------------------------------------------------


@dataclass
class Outcome:
    code: str
    text: str
    """The status message, or the top-1 label when the request succeeded."""


class Clients:
    """One channel per API, shared by every row."""

    def __init__(self, target: str, http_port: int = 0) -> None:
        self.http_port = http_port
        self.channel = open_channel(target)
        self.ours = pb_grpc.ImageClassifierStub(self.channel)
        self.triton = triton.InferenceServerClient(target)
        self.oip_channel = grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", 64 << 20)]
        )
        self.oip = oip_grpc.GRPCInferenceServiceStub(self.oip_channel)

    def close(self) -> None:
        self.channel.close()
        self.oip_channel.close()
        self.triton.close()

    # ours

    def classify(self, request: pb.ClassifyRequest) -> Outcome:
        try:
            reply = self.ours.Classify(request, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return Outcome(exc.code().name, exc.details() or "")
        return Outcome("OK", reply.results[0].top[0].label)

    # Open Inference Protocol

    def infer(self, model: str, inputs: list[triton.InferInput], **kwargs: object) -> Outcome:
        kwargs.setdefault("outputs", [triton.InferRequestedOutput("probabilities", 1)])
        try:
            result = self.triton.infer(model, inputs, client_timeout=TIMEOUT_S, **kwargs)
        except InferenceServerException as exc:
            return Outcome(str(exc.status()).removeprefix("StatusCode."), exc.message() or "")
        return Outcome("OK", result.as_numpy("probabilities")[0][0].decode().split(":", 2)[2])

    def raw_infer(self, request: oip_pb.ModelInferRequest) -> Outcome:
        try:
            self.oip.ModelInfer(request, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return Outcome(exc.code().name, exc.details() or "")
        return Outcome("OK", "")

    # HTTP

    def http(self, request: bytes, close_write: bool = False) -> Outcome:
        """Send raw bytes to the HTTP port; the status, and the error message or the top-1
        label. `close_write`: close the sending side after the bytes (a truncated body)."""
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=TIMEOUT_S) as sock:
            # the server may answer and close before reading everything: read on
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(request)
            if close_write:
                sock.shutdown(socket.SHUT_WR)
            reply = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 16):
                    reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1].decode() if head else "no answer"
        if b"\r\ntransfer-encoding: chunked" in head.lower():
            body = dechunk(body)
        try:
            doc = json.loads(body)
        except ValueError:
            return Outcome(status, body.decode(errors="replace"))
        if "error" in doc:
            return Outcome(status, doc["error"])
        if "results" in doc:  # /v1 classify
            return Outcome(status, doc["results"][0]["predictions"][0]["label"])
        data = doc["outputs"][0]["data"]  # JSON classification output: "score:index:label"
        return Outcome(status, data[0].split(":", 2)[2])


def dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if not size:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out


def http_request(
    path: str, body: bytes = b"", method: str = "POST", content_length: int | None = None,
    **headers: str,
) -> bytes:  # fmt: skip
    """A raw HTTP/1.1 request (the connection closes after it); header names from kwargs
    with "_" as "-"; Content-Length is the body's unless given (None with chunked)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if "Transfer_Encoding" not in headers:
        lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def infer_body(inputs: list[dict], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary-extension infer body asking for the top-1 class as JSON; its headers."""
    head = json.dumps({
        "inputs": inputs,
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
    }).encode()  # fmt: skip
    headers = {"Inference_Header_Content_Length": str(len(head))} if blobs else {}
    return head + b"".join(blobs), headers


def send_infer(c: Clients, inputs: list[dict], *blobs: bytes, model: str = "tiny",
               **headers: str) -> Outcome:  # fmt: skip
    body, extra = infer_body(inputs, *blobs)
    return c.http(http_request(f"/v2/models/{model}/infer", body, **{**extra, **headers}))


def fp32_input(size: int | None = None, **fields: object) -> dict:
    spec: dict = {"name": "input", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE], **fields}
    if size is not None:
        spec["parameters"] = {"binary_data_size": size}
    return spec


def multipart(*files: bytes, field_only: bool = False) -> tuple[bytes, str]:
    boundary = "imgclfboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'.encode()
    ] if field_only else []  # fmt: skip
    for i, data in enumerate(files):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def classify_form(c: Clients, *files: bytes, field_only: bool = False, query: str = "") -> Outcome:
    body, content_type = multipart(*files, field_only=field_only)
    path = f"/v1/models/tiny/classify{query}"
    return c.http(http_request(path, body, Content_Type=content_type))


def slow_body(c: Clients) -> Outcome:
    """Headers and 100 of 3072 declared bytes, then silence: the server answers 408."""
    return c.http(http_request("/v2/models/tiny/infer", bytes(100), content_length=3072))


def chunked(data: bytes, chunk: int = 1 << 16) -> bytes:
    pieces = [b"%x\r\n%s\r\n" % (len(data[i : i + chunk]), data[i : i + chunk])
              for i in range(0, len(data), chunk)]  # fmt: skip
    return b"".join(pieces) + b"0\r\n\r\n"


def tensor_msg(array: np.ndarray, dtype: int = pb.FLOAT32) -> pb.Image:
    return pb.Image(tensor=pb.Tensor(shape=array.shape, dtype=dtype, data=array.tobytes()))


def fp32(shape: tuple[int, ...], fill: float = 0.0) -> np.ndarray:
    return np.full(shape, fill, dtype="<f4")


def red_tensor(batch: int | None = None) -> np.ndarray:
    t = np.zeros((3, SIZE, SIZE), dtype="<f4")
    t[0] = 1.0
    return t if batch is None else np.repeat(t[None], batch, axis=0)


def red_pixels(batch: int | None = None) -> np.ndarray:
    p = np.zeros((3, SIZE, SIZE), dtype=np.uint8)
    p[0] = 230
    return p if batch is None else np.repeat(p[None], batch, axis=0)


def with_value(array: np.ndarray, value: float) -> np.ndarray:
    out = array.copy()
    out.flat[5] = value
    return out


def classify(images: list[pb.Image], model: str = "tiny", **fields: object) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model=model, images=images, **fields)


def infer_input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    inp = triton.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def bytes_input(*images: bytes) -> triton.InferInput:
    """tritonclient's BYTES input named `image`, shaped [N, 1]."""
    inp = triton.InferInput("image", [len(images), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[i] for i in images], dtype=np.object_))
    return inp


def raw_request(
    shape: list[int], datatype: str = "FP32", name: str = "input", model: str = "tiny",
    raw: list[bytes] | None = None, **contents: list,
) -> oip_pb.ModelInferRequest:  # fmt: skip
    request = oip_pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    request.raw_input_contents.extend(raw or [])
    return request


def bytes_elements(*elements: bytes) -> bytes:
    return serialize_bytes_elements(elements)


def class_count_param(value: int) -> oip_pb.ModelInferRequest:
    request = raw_request([1, 3, SIZE, SIZE], raw=[red_tensor(1).tobytes()])
    out = request.outputs.add(name="probabilities")
    out.parameters["classification"].int64_param = value
    return request


def cam_request(model: str = "tiny", classes: int | None = None) -> oip_pb.ModelInferRequest:
    """A red tensor asking for the `cam` output (with `classes` when given)."""
    request = raw_request([1, 3, SIZE, SIZE], model=model, raw=[red_tensor(1).tobytes()])
    out = request.outputs.add(name="cam")
    if classes is not None:
        out.parameters["classes"].int64_param = classes
    return request


def explained(model: str = "tiny", **explain: object) -> pb.ClassifyRequest:
    """A red PNG asking for class activation maps."""
    image = pb.Image(encoded=solid(RED, "PNG"))
    return classify([image], model=model, explain=pb.Explain(**explain))


Send = Callable[[Clients], Outcome]

OURS: dict[str, Send] = {
    "no-images": lambda c: c.classify(classify([])),
    "image-without-data": lambda c: c.classify(classify([pb.Image()])),
    "tensor-dtype-unspecified": lambda c: c.classify(
        classify([tensor_msg(red_tensor(), pb.DATA_TYPE_UNSPECIFIED)])
    ),
    "tensor-dtype-unknown": lambda c: c.classify(classify([tensor_msg(red_tensor(), 99)])),
    "tensor-length-mismatch": lambda c: c.classify(
        classify(
            [pb.Image(tensor=pb.Tensor(shape=[3, SIZE, SIZE], dtype=pb.FLOAT32, data=bytes(100)))]
        )
    ),
    "tensor-negative-dim": lambda c: c.classify(
        classify(
            [pb.Image(tensor=pb.Tensor(shape=[3, -SIZE, SIZE], dtype=pb.FLOAT32, data=bytes(12)))]
        )
    ),
    "tensor-huge-dims": lambda c: c.classify(
        classify(
            [
                pb.Image(
                    tensor=pb.Tensor(shape=[3, 1 << 40, 1 << 40], dtype=pb.FLOAT32, data=bytes(12))
                )
            ]
        )
    ),
    "tensor-wrong-shape": lambda c: c.classify(classify([tensor_msg(fp32((3, 8, 8)))])),
    "tensor-wrong-rank": lambda c: c.classify(classify([tensor_msg(fp32((SIZE, SIZE)))])),
    "tensor-batched-rank": lambda c: c.classify(classify([tensor_msg(red_tensor(1))])),
    "tensor-nan": lambda c: c.classify(classify([tensor_msg(with_value(red_tensor(), np.nan))])),
    "tensor-inf": lambda c: c.classify(classify([tensor_msg(with_value(red_tensor(), np.inf))])),
    "tensor-fp16-inf": lambda c: c.classify(
        classify([tensor_msg(with_value(red_tensor(), -np.inf).astype("<f2"), pb.FLOAT16)])
    ),
    "tensor-uint8-pixels": lambda c: c.classify(classify([tensor_msg(red_pixels(), pb.UINT8)])),
    "too-many-images": lambda c: c.classify(
        classify([pb.Image(encoded=solid(RED, "PNG"))] * (MAX_IMAGES + 1))
    ),
    "many-empty-images": lambda c: c.classify(classify([pb.Image(encoded=b"")] * 100_000)),
    "oversize-message": lambda c: c.classify(
        classify([pb.Image(encoded=random.Random(1).randbytes(3 * MAX_MESSAGE // 2))])
    ),
    "unknown-model": lambda c: c.classify(
        classify([pb.Image(encoded=solid(RED, "PNG"))], model="no-such-model")
    ),
    "model-name-1mb": lambda c: c.classify(
        classify([pb.Image(encoded=solid(RED, "PNG"))], model="m" * 1_000_000)
    ),
    "model-name-traversal": lambda c: c.classify(
        classify([pb.Image(encoded=solid(RED, "PNG"))], model="../outside/evil")
    ),
    "unknown-version": lambda c: c.classify(
        classify([pb.Image(encoded=solid(RED, "PNG"))], version=9)
    ),
    "negative-version": lambda c: c.classify(
        classify([pb.Image(encoded=solid(RED, "PNG"))], version=-1)
    ),
    "no-model-name": lambda c: c.classify(classify([pb.Image(encoded=solid(RED, "PNG"))], "")),
    "top-k-over-limit": lambda c: c.classify(
        classify([pb.Image(encoded=solid(RED, "PNG"))], top_k=MAX_TOP_K + 1)
    ),
    "top-k-huge": lambda c: c.classify(
        classify([pb.Image(encoded=solid(RED, "PNG"))], top_k=2**32 - 1)
    ),
    "explain-unsupported": lambda c: c.classify(explained("flat", top_k=1)),
    "explain-too-many-classes": lambda c: c.classify(explained(top_k=6)),
    "explain-unknown-class": lambda c: c.classify(explained(classes=[3])),
    "explain-top-k-and-classes": lambda c: c.classify(explained(top_k=1, classes=[0])),
}

OIP: dict[str, Send] = {
    "oip-dtype-int32": lambda c: c.infer(
        "tiny", [infer_input("input", np.zeros((1, 3, SIZE, SIZE), np.int32), "INT32")]
    ),
    "oip-wrong-rank": lambda c: c.infer("tiny", [infer_input("input", red_tensor(), "FP32")]),
    "oip-wrong-shape": lambda c: c.infer(
        "tiny", [infer_input("input", fp32((1, 3, 8, 8)), "FP32")]
    ),
    "oip-zero-dim": lambda c: c.raw_infer(raw_request([0, 3, SIZE, SIZE], raw=[b""])),
    "oip-nan": lambda c: c.infer(
        "tiny", [infer_input("input", with_value(red_tensor(1), np.nan), "FP32")]
    ),
    "oip-inf": lambda c: c.infer(
        "tiny", [infer_input("input", with_value(red_tensor(1), np.inf).astype("<f2"), "FP16")]
    ),
    "oip-batch-too-large": lambda c: c.infer(
        "tiny", [infer_input("input", red_tensor(MAX_BATCH + 1), "FP32")]
    ),
    "oip-bytes-batch-too-large": lambda c: c.infer(
        "tiny", [bytes_input(*[solid(RED, "PNG")] * (MAX_BATCH + 1))]
    ),
    "oip-raw-length-mismatch": lambda c: c.raw_infer(
        raw_request([1, 3, SIZE, SIZE], raw=[bytes(100)])
    ),
    "oip-raw-count-mismatch": lambda c: c.raw_infer(
        raw_request([1, 3, SIZE, SIZE], raw=[red_tensor(1).tobytes()] * 2)
    ),
    "oip-typed-count-mismatch": lambda c: c.raw_infer(
        raw_request([1, 3, SIZE, SIZE], fp32_contents=[0.5] * 5)
    ),
    "oip-typed-fp16": lambda c: c.raw_infer(
        raw_request([1, 3, SIZE, SIZE], "FP16", fp32_contents=[0.5] * (3 * SIZE * SIZE))
    ),
    "oip-typed-uint8-range": lambda c: c.raw_infer(
        raw_request([1, 3, SIZE, SIZE], "UINT8", uint_contents=[300] * (3 * SIZE * SIZE))
    ),
    "oip-no-inputs": lambda c: c.raw_infer(oip_pb.ModelInferRequest(model_name="tiny")),
    "oip-two-inputs": lambda c: c.infer(
        "tiny", [infer_input("input", red_tensor(1), "FP32"), bytes_input(solid(RED, "PNG"))]
    ),
    "oip-unknown-input": lambda c: c.infer("tiny", [infer_input("pixels", red_tensor(1), "FP32")]),
    "oip-unknown-output": lambda c: c.infer(
        "tiny",
        [infer_input("input", red_tensor(1), "FP32")],
        outputs=[triton.InferRequestedOutput("scores")],
    ),
    "oip-unknown-parameter": lambda c: c.infer(
        "tiny", [infer_input("input", red_tensor(1), "FP32")], parameters={"temperature": 2}
    ),
    "oip-unknown-output-parameter": lambda c: c.raw_infer(unknown_output_parameter()),
    "oip-sequence-id": lambda c: c.infer(
        "tiny", [infer_input("input", red_tensor(1), "FP32")], sequence_id=7
    ),
    "oip-timeout-not-int": lambda c: c.raw_infer(string_timeout()),
    "oip-priority-out-of-range": lambda c: c.infer(
        "tiny", [infer_input("input", red_tensor(1), "FP32")], priority=5
    ),
    "oip-class-count-zero": lambda c: c.raw_infer(class_count_param(0)),
    "oip-cam-unsupported": lambda c: c.raw_infer(cam_request("flat")),
    "oip-cam-too-many-classes": lambda c: c.raw_infer(cam_request(classes=6)),
    "oip-cam-classes-zero": lambda c: c.raw_infer(cam_request(classes=0)),
    "oip-image-not-bytes": lambda c: c.infer("tiny", [infer_input("image", red_tensor(1), "FP32")]),
    "oip-image-bad-shape": lambda c: c.raw_infer(
        raw_request(
            [1, 2],
            "BYTES",
            name="image",
            raw=[bytes_elements(solid(RED, "PNG"), solid(RED, "PNG"))],
        )
    ),
    "oip-bytes-count-mismatch": lambda c: c.raw_infer(
        raw_request([2], "BYTES", name="image", raw=[bytes_elements(solid(RED, "PNG"))])
    ),
    "oip-bytes-length-corrupt": lambda c: c.raw_infer(
        raw_request([1], "BYTES", name="image", raw=[struct.pack("<I", 1000) + bytes(10)])
    ),
    "oip-bytes-length-truncated": lambda c: c.raw_infer(
        raw_request([1], "BYTES", name="image", raw=[b"\x05\x00"])
    ),
    "oip-bytes-many-empty": lambda c: c.raw_infer(
        raw_request([1], "BYTES", name="image", raw=[bytes(4 * 100_000)])
    ),
    "oip-oversize-message": lambda c: c.infer(
        "tiny", [bytes_input(random.Random(1).randbytes(3 * MAX_MESSAGE // 2))]
    ),
    "oip-unknown-model": lambda c: c.infer("no-such-model", [bytes_input(solid(RED, "PNG"))]),
    "oip-model-name-1mb": lambda c: c.infer("m" * 1_000_000, [bytes_input(solid(RED, "PNG"))]),
    "oip-model-name-traversal": lambda c: c.infer("/etc/passwd", [bytes_input(solid(RED, "PNG"))]),
    "oip-unknown-version": lambda c: c.infer(
        "tiny", [bytes_input(solid(RED, "PNG"))], model_version="9"
    ),
    "oip-version-not-int": lambda c: c.infer(
        "tiny", [bytes_input(solid(RED, "PNG"))], model_version="latest"
    ),
    "oip-uint8-pixels": lambda c: c.infer("tiny", [infer_input("input", red_pixels(1), "UINT8")]),
}


def red_raw() -> bytes:
    return red_tensor(1).astype("<f4").tobytes()


HTTP: dict[str, Send] = {
    "http-truncated-body": lambda c: c.http(
        http_request("/v2/models/tiny/infer", bytes(100), content_length=3072), close_write=True
    ),
    "http-slow-body": slow_body,
    "http-huge-header": lambda c: c.http(http_request("/v2", method="GET", X_Big="a" * 65536)),
    "http-oversize-body": lambda c: c.http(
        http_request("/v2/models/tiny/infer", content_length=3 * MAX_MESSAGE // 2)
    ),
    "http-oversize-chunked": lambda c: c.http(
        http_request(
            "/v2/models/tiny/infer",
            chunked(bytes(3 * MAX_MESSAGE // 2)),
            Transfer_Encoding="chunked",
        )
    ),
    "http-header-length-past-body": lambda c: c.http(
        http_request(
            "/v2/models/tiny/infer", b"{" + b" " * 299, Inference_Header_Content_Length="5000"
        )
    ),
    "http-header-length-not-int": lambda c: c.http(
        http_request("/v2/models/tiny/infer", b"{}", Inference_Header_Content_Length="ten")
    ),
    "http-binary-size-past-body": lambda c: send_infer(c, [fp32_input(4000)], red_raw()),
    "http-binary-size-short": lambda c: send_infer(c, [fp32_input(100)], red_raw()),
    "http-binary-size-wrong-for-shape": lambda c: send_infer(c, [fp32_input(100)], bytes(100)),
    "http-json-invalid": lambda c: c.http(http_request("/v2/models/tiny/infer", b'{"inputs": [')),
    "http-json-count-mismatch": lambda c: send_infer(c, [fp32_input(data=[0.5] * 5)]),
    "http-json-ragged": lambda c: send_infer(c, [fp32_input(data=[[1], [2, 3]])]),
    "http-json-bytes-not-strings": lambda c: send_infer(
        c, [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [1]}]
    ),
    "http-bytes-length-corrupt": lambda c: send_infer(
        c,
        [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": 14},
            }
        ],
        struct.pack("<I", 1000) + bytes(10),
    ),
    "http-unknown-model": lambda c: send_infer(
        c, [fp32_input(3072)], red_raw(), model="no-such-model"
    ),
    "http-wrong-method": lambda c: c.http(http_request("/v2/models/tiny/infer", method="GET")),
    "http-binary-ok": lambda c: send_infer(c, [fp32_input(3072)], red_raw()),
    "http-classify-not-image": lambda c: c.http(
        http_request("/v1/models/tiny/classify", random.Random(1).randbytes(4096))
    ),
    "http-classify-empty": lambda c: c.http(http_request("/v1/models/tiny/classify")),
    "http-classify-too-many-files": lambda c: classify_form(c, *[solid(RED, "PNG")] * 5),
    "http-classify-no-file": lambda c: classify_form(c, field_only=True),
    "http-classify-bad-top-k": lambda c: c.http(
        http_request("/v1/models/tiny/classify?top_k=50", solid(RED, "PNG"))
    ),
    "http-classify-explain-unsupported": lambda c: c.http(
        http_request("/v1/models/flat/classify?explain=1", solid(RED, "PNG"))
    ),
    "http-classify-explain-too-many": lambda c: c.http(
        http_request("/v1/models/tiny/classify?explain=6", solid(RED, "PNG"))
    ),
    "http-classify-explain-unknown-class": lambda c: c.http(
        http_request("/v1/models/tiny/classify?explain_class=7", solid(RED, "PNG"))
    ),
    "http-classify-bad-format": lambda c: c.http(
        http_request("/v1/models/tiny/classify?format=gif", solid(RED, "PNG"))
    ),
    "http-classify-png-two-images": lambda c: classify_form(
        c, solid(RED, "PNG"), solid(RED, "PNG"), query="?format=png"
    ),
    "http-classify-ok": lambda c: c.http(
        http_request("/v1/models/tiny/classify", solid(RED, "PNG"), method="PUT")
    ),
}


def unknown_output_parameter() -> oip_pb.ModelInferRequest:
    request = raw_request([1, 3, SIZE, SIZE], raw=[red_tensor(1).tobytes()])
    request.outputs.add(name="probabilities").parameters["format"].string_param = "json"
    return request


def string_timeout() -> oip_pb.ModelInferRequest:
    request = raw_request([1, 3, SIZE, SIZE], raw=[red_tensor(1).tobytes()])
    request.parameters["timeout"].string_param = "soon"
    return request


def send_encoded(case: str, api: str, c: Clients) -> Outcome:
    model, data = ENCODED[case]()
    if api == "ours":
        return c.classify(classify([pb.Image(encoded=data)], model=model))
    return c.infer(model, [bytes_input(data)])


def sender(row: Row) -> Send:
    """How the row's request is built and sent."""
    if row.case in ENCODED:
        return functools.partial(send_encoded, row.case, row.api)
    table = {"ours": OURS, "oip": OIP, "http": HTTP}[row.api]
    return table[row.case]


# --- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clients(server: ServerProcess) -> Iterator[Clients]:
    c = Clients(server.target, server.http_port)
    yield c
    c.close()


def assert_still_serving(clients: Clients) -> None:
    """A good request through each API gets the right label."""
    good = clients.classify(classify([pb.Image(encoded=solid(RED, "PNG"))]))
    assert (good.code, good.text) == ("OK", "red")
    good = clients.infer("luma", [bytes_input(encode(Image.new("L", (20, 20), 240), "PNG"))])
    assert (good.code, good.text) == ("OK", "bright")
    good = clients.http(http_request("/v1/models/tiny/classify", solid(RED, "PNG")))
    assert (good.code, good.text) == ("200", "red")


def test_catalogue_is_complete() -> None:
    """Every row has a sender, every sender a row, and the rows are unique."""
    assert len({r.id for r in ROWS}) == len(ROWS)
    assert {r.api for r in ROWS} == {"ours", "oip", "http"}
    covered = set(ENCODED) | set(OURS) | set(OIP) | set(HTTP)
    assert {r.case for r in ROWS} == covered
    assert all(r.reason == "-" for r in ROWS if r.code in ("OK", "200"))
    # RESOURCE_EXHAUSTED comes from gRPC's message limit (not counted) or the memory budget.
    assert all(r.reason in ("-", "memory_budget") for r in ROWS if r.code == "RESOURCE_EXHAUSTED")


SENT: list[Row] = []
"""Rows sent to the module's server so far (the failures metric must match them)."""


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_row(server: ServerProcess, clients: Clients, row: Row) -> None:
    outcome = sender(row)(clients)
    SENT.append(row)
    assert outcome.code == row.code, f"{row.input}: {outcome}"
    assert row.expect in outcome.text, f"{row.input}: {outcome}"
    assert len(outcome.text) <= MAX_MESSAGE_CHARS, f"{row.input}: {outcome.text[:200]}..."
    if outcome.code == "INTERNAL":  # never a traceback or an internal detail to the client
        assert outcome.text == "internal error; see the server log"
    assert_still_serving(clients)
    assert server.proc.poll() is None


def failures_by_reason(server: ServerProcess) -> Counter[str]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "imgclf_request_failures_total":
                counts[s.labels["reason"]] += int(s.value)
    return counts


def test_rejects_are_counted_by_reason(server: ServerProcess, clients: Clients) -> None:
    """The failures metric of the module's server holds exactly the catalogue's reasons of
    the rows sent to it (summed over model labels; the good requests never fail)."""
    if not SENT:  # this test alone was selected
        for row in ROWS:
            sender(row)(clients)
            SENT.append(row)
    counted = +failures_by_reason(server)
    expected = Counter(r.reason for r in SENT if r.reason != "-")
    wrong = {k: f"{counted[k]} of {v}" for k, v in expected.items() if counted[k] != v}
    extra = {k: v for k, v in counted.items() if k not in expected}
    assert not wrong and not extra, (
        f"reasons counted differently from the catalogue (counted of expected): {wrong}; "
        f"unexpected reasons: {extra}"
    )


def test_server_survived_every_row(server: ServerProcess, clients: Clients) -> None:
    assert_still_serving(clients)
    assert server.proc.poll() is None
    log = server.log()
    unmapped = re.findall(r"^.*failed unexpectedly.*$", log, flags=re.MULTILINE)
    assert not unmapped, f"exceptions that reached the transport unmapped: {unmapped[:5]}"
