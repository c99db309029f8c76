"""Fixtures for the service unit tests: real photos from scikit-image, a tiny model repository."""

from __future__ import annotations

import numpy as np
import pytest


def photo(name: str) -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return getattr(data, name)()


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    """A 451x300 (width x height) landscape photo of a cat, HWC uint8 RGB."""
    return photo("chelsea")


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    """A 600x400 landscape photo of a cup of coffee, HWC uint8 RGB."""
    return photo("coffee")


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A 512x512 square photo, HWC uint8 RGB."""
    return photo("astronaut")
