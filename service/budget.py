"""The server's memory budget: bytes that requests hold in flight, reserved before they are
spent and refused at once (RESOURCE_EXHAUSTED) beyond the budget.

Two kinds of reservation draw on one budget: a request message while it is received and parsed
(service/grpc/budget.py) and an image while it is decoded (service/imaging.py, from the header,
before any pixel is decoded). Released memory is handed back to the operating system with
glibc's `malloc_trim` once enough has been freed, so a burst of large requests does not leave
the process at its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from imgclf.errors import MemoryExhausted

log = logging.getLogger(__name__)

MESSAGE_COPIES = 4
"""A request message is in memory up to four times while it is served: gRPC's receive buffer
and the bytes object it hands over (kept for the whole call), the parsed message, and the
image bytes taken out of it (protobuf hands out a copy); measured with benchmarks/memory.py
(64 concurrent 21 MiB messages grew the server by 1.39 x what three copies reserved)."""
MESSAGE_SLOTS = 16
"""Largest-size messages the budget holds at once: the default --max-message-bytes is the
budget / (MESSAGE_COPIES x MESSAGE_SLOTS)."""


def default_message_limit(budget_bytes: int) -> int:
    """The message-size limit a memory budget affords (see MESSAGE_SLOTS)."""
    return budget_bytes // (MESSAGE_COPIES * MESSAGE_SLOTS)


TRIM_AFTER_BYTES = 64 * 1024 * 1024
"""Collect garbage and call malloc_trim once this much reserved memory has been released
since the last time."""
TRIM_INTERVAL_S = 1.0
"""At most one collection and trim per this many seconds (a full collection holds the GIL)."""
TRIM_DELAY_S = 0.2
"""... that long after the release that crossed the threshold (the releasing call frees its
buffers right after; the trim catches those of the calls that end meanwhile too)."""


MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
"""Allocations from this size up get their own mapping, unmapped (returned to the OS) when
freed. glibc's default starts at 128 KiB but raises itself to the largest block freed (up to
32 MiB), after which request-sized buffers come from the heap and stay resident. 1 MiB cost
a quarter of the throughput of a small model (map/unmap and page faults per decode), and so
did 2 malloc arenas instead of glibc's default (measured with `imgclf bench`, ABAB)."""


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def configure_allocator() -> bool:
    """Set glibc malloc's mmap threshold (see MMAP_THRESHOLD_BYTES) for this process, unless
    the environment already sets it (MALLOC_MMAP_THRESHOLD_); False where the C library is not
    glibc."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    m_mmap_threshold = -3  # <malloc.h>
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(m_mmap_threshold, MMAP_THRESHOLD_BYTES)
    return True


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0) (returns freed heap and arena memory to the OS); a no-op where
    the C library has none (musl, macOS)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0) and None


class MemoryBudget:
    """A thread-safe byte budget: `reserve` or refuse at once, never wait."""

    def __init__(self, limit_bytes: int, trim: Callable[[], None] | None = None) -> None:
        self.limit = limit_bytes
        self._held = 0
        self._peak = 0
        self._released_since_trim = 0
        self._trim_pending = False
        self._last_trim = -TRIM_INTERVAL_S
        self._lock = threading.Lock()
        self._trim = trim if trim is not None else _malloc_trim()

    @property
    def held(self) -> int:
        """Bytes reserved now."""
        return self._held

    @property
    def peak(self) -> int:
        """Most bytes ever reserved at once."""
        return self._peak

    def try_reserve(self, nbytes: int) -> bool:
        """Reserve `nbytes` if they fit in what is left; False (nothing reserved) if not."""
        with self._lock:
            if self._held + nbytes > self.limit:
                return False
            self._held += nbytes
            self._peak = max(self._peak, self._held)
            return True

    def release(self, nbytes: int, trim: bool = True) -> None:
        """Give back a reservation; trims the heap once TRIM_AFTER_BYTES have come back
        (`trim=False`: nothing to trim, e.g. a worst case never allocated, or memory that goes
        back to the OS by itself when freed)."""
        with self._lock:
            self._held -= nbytes
            if not trim:
                return
            self._released_since_trim += nbytes
            if self._released_since_trim < TRIM_AFTER_BYTES:
                return
        self.trim_soon()

    def trim_soon(self) -> None:
        """Collect garbage and trim the heap shortly (the releasing caller still holds what
        it released; a refusal may be owed to reservations that hang on reference cycles)."""
        with self._lock:
            if self._trim_pending:
                return
            self._released_since_trim = 0
            self._trim_pending = True
            delay = max(TRIM_DELAY_S, self._last_trim + TRIM_INTERVAL_S - time.monotonic())
        timer = threading.Timer(delay, self._trim_now)
        timer.daemon = True
        timer.start()

    def _trim_now(self) -> None:
        with self._lock:
            self._trim_pending = False
            self._last_trim = time.monotonic()
        # A refused call's buffers hang on reference cycles (the abort's traceback holds the
        # frames that hold the message): free them now, not at the next full collection.
        gc.collect()
        self._trim()

    def reserve(self, nbytes: int, what: str) -> None:
        """Reserve or raise MemoryExhausted (RESOURCE_EXHAUSTED: retry later)."""
        if not self.try_reserve(nbytes):
            raise MemoryExhausted(
                f"server memory budget exhausted: {what} needs {nbytes / 2**20:.1f} MiB, "
                f"{max(0, self.limit - self._held) / 2**20:.1f} MiB of "
                f"{self.limit / 2**20:.0f} MiB free; retry later"
            )

    @contextmanager
    def held_for(self, nbytes: int, what: str) -> Iterator[None]:
        """Hold `nbytes` for the body of the with statement (see reserve)."""
        self.reserve(nbytes, what)
        try:
            yield
        finally:
            self.release(nbytes)
