"""Domain errors, each naming its canonical status code.

The codes are the canonical RPC status names shared by gRPC and the Open Inference Protocol;
the transport turns `code` into a `grpc.StatusCode` in exactly one place
(service/grpc/errors.py). Nothing here imports grpc.
"""

from __future__ import annotations


class ImgclfError(Exception):
    """Base of every error the service reports to a client."""

    code = "INTERNAL"


class InvalidInput(ImgclfError):
    """The request or one of its images/tensors is malformed."""

    code = "INVALID_ARGUMENT"


class ModelNotFound(ImgclfError):
    """No model (or no such version) by that name in the repository."""

    code = "NOT_FOUND"


class ModelNotReady(ImgclfError):
    """The model exists but is not loaded, or the server is shutting down."""

    code = "UNAVAILABLE"


class QueueFull(ImgclfError):
    """The model's queue is at its bound; the client should retry later."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ImgclfError):
    """The request's deadline passed before it could be served."""

    code = "DEADLINE_EXCEEDED"


class InferenceFailed(ImgclfError):
    """The engine failed on a batch. Clients get a generic message; details go to the log."""

    code = "INTERNAL"
