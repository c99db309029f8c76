"""The one place where domain errors become gRPC status codes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from imgclf.errors import ImgclfError, QueueFull, redact

log = logging.getLogger(__name__)

T = TypeVar("T")
GENERIC_INTERNAL = "internal error; see the server log"
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


def status_of(error: ImgclfError) -> grpc.StatusCode:
    """The status code named by the error (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, ...)."""
    return grpc.StatusCode[error.code]


def public_message(error: ImgclfError) -> str:
    """What the client is told: the message, redacted (absolute paths cut, echoed input
    bounded: imgclf.errors.redact), except for internal errors (logged instead)."""
    return GENERIC_INTERNAL if error.code == "INTERNAL" else redact(str(error))


def maps_errors(
    method: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Decorate an async servicer method: domain errors abort with their code; any other
    exception is logged with its traceback and reaches the client as a generic INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except ImgclfError as exc:
            if exc.code == "INTERNAL":
                log.error("%s failed: %s", method.__name__, exc)
            if isinstance(exc, QueueFull) and exc.retry_after_ms:
                # gRPC's own retry policy reads this key (gRFC A6).
                context.set_trailing_metadata(((RETRY_PUSHBACK_KEY, str(exc.retry_after_ms)),))
            await context.abort(status_of(exc), public_message(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("%s failed unexpectedly", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, GENERIC_INTERNAL)
        raise AssertionError("unreachable: context.abort raises")

    return wrapper
