"""The process's resident memory, read the cheap way, and handing freed heap back to the OS."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os


def rss_bytes() -> int | None:
    """Resident set size of this process in bytes (None where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@functools.cache
def _libc() -> ctypes.CDLL | None:
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL("libc.so.6")
        if hasattr(libc, "malloc_trim"):
            return libc
    return None


def trim_heap() -> None:
    """Return the C heap's free pages to the OS (glibc's malloc_trim; elsewhere nothing).

    Loading a model frees a lot at once (the parsed model, the optimising session); glibc
    keeps freed memory for reuse unless asked, so without this the process would stay as
    big as its loads' peak."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
