"""The bench over HTTP: Open Inference requests with Triton's binary tensor data extension,
built once as complete HTTP/1.1 requests, sent over keep-alive connections by a minimal
asyncio client (headers parsed for Content-Length only; replies not decoded), so that the
client's own cost stays small and equal for every request.
"""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np

from imgclf.bytestensor import serialize_bytes_elements

HTTP_TO_GRPC_CODE = {200: 0, 400: 3, 401: 16, 404: 5, 408: 4, 413: 8, 429: 8, 500: 13,
                     501: 12, 503: 14, 504: 4}  # fmt: skip
"""HTTP status -> the gRPC status code value the bench's records count errors by."""


def infer_path(model: str) -> str:
    return f"/v2/models/{model}/infer"


def build_http_payloads(
    model: str, items: list[bytes] | list[np.ndarray], batch: int, host: str, *,
    input_name: str = "input", image_input_name: str = "image", output_name: str = "",
    token: str | None = None,
) -> tuple[str, list[bytes]]:  # fmt: skip
    """(path, complete HTTP requests): one per starting item, each carrying `batch`
    consecutive items as binary tensor data, asking for `output_name` as binary data."""
    n = len(items)
    path = infer_path(model)
    payloads = []
    for start in range(n):
        group = [items[(start + j) % n] for j in range(batch)]
        if isinstance(group[0], bytes):
            raw = serialize_bytes_elements(group)  # type: ignore[arg-type]
            spec = {"name": image_input_name, "datatype": "BYTES", "shape": [batch, 1]}
        else:
            pixels = group[0].dtype == np.uint8  # type: ignore[union-attr]
            arr = np.ascontiguousarray(np.stack(group), dtype="u1" if pixels else "<f4")
            raw = arr.tobytes()
            spec = {"name": input_name, "datatype": "UINT8" if pixels else "FP32",
                    "shape": list(arr.shape)}  # fmt: skip
        spec["parameters"] = {"binary_data_size": len(raw)}
        doc: dict = {"inputs": [spec]}
        if output_name:
            doc["outputs"] = [{"name": output_name, "parameters": {"binary_data": True}}]
        else:
            doc["parameters"] = {"binary_data_output": True}
        header = json.dumps(doc, separators=(",", ":")).encode()
        lines = [
            f"POST {path} HTTP/1.1", f"Host: {host}",
            "Content-Type: application/octet-stream",
            f"Inference-Header-Content-Length: {len(header)}",
            f"Content-Length: {len(header) + len(raw)}",
        ]  # fmt: skip
        if token:
            lines.append(f"Authorization: Bearer {token}")
        payloads.append(("\r\n".join(lines) + "\r\n\r\n").encode() + header + raw)
    return path, payloads


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> tuple[int, bytes]:
    """Send one request on a keep-alive connection; (status, body)."""
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    body = await reader.readexactly(_content_length(head))
    return _status(head), body


class HttpPool:
    """Keep-alive connections to one server, one request in flight on each."""

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def call(self, payload: bytes, timeout: float) -> int:
        """The gRPC code value the bench records for this request's outcome."""
        conn = self._idle.pop() if self._idle else await self._open()
        try:
            status, _ = await asyncio.wait_for(exchange(*conn, payload), timeout)
        except BaseException:
            conn[1].close()
            raise
        self._idle.append(conn)
        return HTTP_TO_GRPC_CODE.get(status, 2)  # 2: UNKNOWN

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 24)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._all.append(writer)
        return reader, writer

    async def close(self) -> None:
        for writer in self._all:
            writer.close()


def probe_http(target: str, payload: bytes, timeout: float) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body)."""

    async def once() -> tuple[int, bytes]:
        host, port = target.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 24)
        try:
            return await asyncio.wait_for(exchange(reader, writer, payload), timeout)
        finally:
            writer.close()

    return asyncio.run(once())


def check_http_reply(status: int, body: bytes, batch: int) -> str | None:
    """Why a reply is not a classification of `batch` images (None: it is)."""
    if status != 200:
        return f"HTTP {status}: {body[:300].decode(errors='replace')}"
    try:
        head = json.JSONDecoder().raw_decode(body.decode("latin-1"))[0]
    except ValueError:
        return "reply does not start with a JSON header"
    outputs = head.get("outputs") or []
    if not outputs:
        return "no outputs"
    shape = outputs[0].get("shape") or []
    if shape and shape[0] != batch:
        return f"output {outputs[0].get('name')} has shape {shape}"
    return None
