"""OS-level thread names, so `top -H`, `ps -L` and /proc/<pid>/task/*/comm show which thread
of the server uses the CPU (Python before 3.14 names its threads only for itself)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

PR_SET_NAME = 15
NAME_BYTES = 15  # the kernel keeps 16 bytes, the last one NUL


@functools.cache
def _prctl() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def name_this_thread(name: str) -> None:
    """Name the calling thread for the OS (Linux; a no-op elsewhere). Long names are cut to
    the kernel's 15 bytes."""
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_NAME, name.encode()[:NAME_BYTES], 0, 0, 0)  # type: ignore[operator]
