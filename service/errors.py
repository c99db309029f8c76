"""Domain errors, each naming its canonical status code and a short failure reason.

The codes are the canonical RPC status names shared by gRPC and the Open Inference Protocol;
the transport turns `code` into a `grpc.StatusCode` in exactly one place
(service/grpc/errors.py). `reason` labels the failures metric (a small, fixed vocabulary).
Nothing here imports grpc.
"""

from __future__ import annotations


class ImgclfError(Exception):
    """Base of every error the service reports to a client."""

    code = "INTERNAL"
    reason = "internal"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class InvalidInput(ImgclfError):
    """The request or one of its images/tensors is malformed."""

    code = "INVALID_ARGUMENT"
    reason = "invalid_input"


class ModelNotFound(ImgclfError):
    """No model (or no such version) by that name in the repository."""

    code = "NOT_FOUND"
    reason = "model_not_found"


class ModelNotReady(ImgclfError):
    """The model exists but is not loaded, or the server is shutting down."""

    code = "UNAVAILABLE"
    reason = "not_ready"


class QueueFull(ImgclfError):
    """The model is at capacity; the client should retry later (after `retry_after_ms`)."""

    code = "RESOURCE_EXHAUSTED"
    reason = "queue_full"

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class MemoryExhausted(ImgclfError):
    """The server's memory budget cannot hold this request now; the client should retry."""

    code = "RESOURCE_EXHAUSTED"
    reason = "memory_budget"


class DeadlineExceeded(ImgclfError):
    """The request's deadline passed before it could be served."""

    code = "DEADLINE_EXCEEDED"
    reason = "deadline_exceeded"


class ModelControlError(ImgclfError):
    """A repository load/unload request that cannot be carried out (control mode, bad model)."""

    code = "FAILED_PRECONDITION"
    reason = "model_control"


class Unsupported(ImgclfError):
    """A protocol feature this server does not implement."""

    code = "UNIMPLEMENTED"
    reason = "unsupported"


class InferenceFailed(ImgclfError):
    """The engine failed on a batch. Clients get a generic message; details go to the log."""

    code = "INTERNAL"
    reason = "inference_failed"
