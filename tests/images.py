"""Encoding helpers shared by every test."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def encode(img: Image.Image | np.ndarray, fmt: str = "JPEG", **params: Any) -> bytes:
    """Encode a PIL image or an HWC uint8 array with PIL."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()
