"""The one place where domain errors become HTTP statuses (the gRPC code's counterpart)."""

from __future__ import annotations

import json
import logging
import math

from aiohttp import web

from imgclf.errors import ImgclfError, QueueFull
from imgclf.grpc.errors import GENERIC_INTERNAL, public_message

log = logging.getLogger(__name__)

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
"""Canonical status code -> HTTP status, as Triton's HTTP endpoint answers them."""


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """`{"error": message}` with the status: the Open Inference Protocol's error shape."""
    return web.Response(
        status=status,
        body=json.dumps({"error": message}).encode(),
        content_type="application/json",
        headers=headers,
    )


def domain_error_response(error: ImgclfError) -> web.Response:
    """The response for a domain error; queue full carries Retry-After (whole seconds)."""
    if error.code == "INTERNAL":
        log.error("HTTP request failed: %s", error)
    headers = None
    if isinstance(error, QueueFull) and error.retry_after_ms:
        headers = {"Retry-After": str(max(1, math.ceil(error.retry_after_ms / 1000)))}
    return error_response(HTTP_STATUS.get(error.code, 500), public_message(error), headers)


def internal_error_response() -> web.Response:
    return error_response(500, GENERIC_INTERNAL)
