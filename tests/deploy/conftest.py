"""Fixtures of the deployment tests: system binaries that CI must have."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_binary(name: str) -> str:
    """The binary's path; without it, skip on a workstation but fail in CI (CI=true)."""
    path = shutil.which(name)
    if path is not None:
        return path
    hint = "Debian package `prometheus` (make deploy-tools)"
    if in_ci():
        pytest.fail(f"{name} is not installed, and CI must run this test: install the {hint}")
    pytest.skip(f"{name} is not installed (the {hint}); with CI=true this fails instead")
