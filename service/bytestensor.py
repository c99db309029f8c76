"""The Open Inference Protocol's BYTES tensor layout: each element as a 4-byte little-endian
length, then its bytes. The one encoder, shared by the server's converters
(imgclf.grpc.oip_tensors reads the layout with its limits), the clients and the bench."""

from __future__ import annotations

import struct
from collections.abc import Iterable

LENGTH = struct.Struct("<I")


def serialize_bytes_elements(elements: Iterable[bytes]) -> bytes:
    """One raw BYTES tensor holding `elements` in order."""
    return b"".join(LENGTH.pack(len(e)) + e for e in elements)
