"""The gRPC transport: converts messages to core calls and maps domain errors to status codes."""

from __future__ import annotations

import time

import grpc


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The client's gRPC deadline as a time.monotonic() instant, if it set one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
