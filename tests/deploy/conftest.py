"""Fixtures of the deployment tests: system binaries that CI must have."""

from __future__ import annotations

import shutil

from tests.conftest import tool_missing


def require_binary(name: str) -> str:
    """The binary's path; without it, skip on a workstation but fail in CI (tests/conftest.py:
    tool_missing)."""
    path = shutil.which(name)
    if path is None:
        tool_missing(f"{name} is not installed (the Debian package `prometheus`, "
                     "make deploy-tools)")  # fmt: skip
    assert path is not None
    return path
