"""Domain errors, each naming its canonical status code and a short failure reason.

The codes are the canonical RPC status names shared by gRPC and the Open Inference Protocol;
the transport turns `code` into a `grpc.StatusCode` in exactly one place
(service/grpc/errors.py). `reason` labels the failures metric (a small, fixed vocabulary).
Nothing here imports grpc.
"""

from __future__ import annotations

import re

MAX_MESSAGE_CHARS = 400
"""Longest status message a client is sent; longer ones lose their middle (echoed input)."""
ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])/(?:[\w.@+~-]+/)+([\w.@+~-]*)")
"""An absolute file path (at least one folder deep), not part of a relative one."""


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


class InvalidModelName(InvalidInput):
    """A model name that is not a plain folder name of the repository (separators, `..`, an
    absolute path, odd characters, or a folder linking outside the repository)."""

    reason = "bad_model_name"


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

    def __init__(
        self, message: str, retry_after_ms: int | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message, reason)
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


class ExplainUnsupported(ImgclfError):
    """Class activation maps asked of a model that cannot give them: its head is not global
    pooling + one linear layer (the message says what it is), or its config turns them off."""

    code = "FAILED_PRECONDITION"
    reason = "explain_unsupported"


class Unsupported(ImgclfError):
    """A protocol feature this server does not implement."""

    code = "UNIMPLEMENTED"
    reason = "unsupported"


class InferenceFailed(ImgclfError):
    """The engine failed on a batch. Clients get a generic message; details go to the log."""

    code = "INTERNAL"
    reason = "inference_failed"


def redact(text: str) -> str:
    """What of a message may reach a client: absolute paths cut to their last component
    (`.../name`), and at most MAX_MESSAGE_CHARS characters, the middle elided, so that input
    echoed back (a model name of a megabyte) neither bloats the status nor hides its end."""
    text = ABSOLUTE_PATH.sub(lambda m: f".../{m.group(1)}", text)
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    keep = MAX_MESSAGE_CHARS - 40  # room for the marker
    marker = f"...[{len(text) - keep} characters cut]..."
    head = keep // 2
    return text[:head] + marker + text[len(text) - (keep - head) :]
