"""Training unit tests run torch on one thread (see trees.one_torch_thread)."""

from __future__ import annotations

import pytest

from tests.unit.training.trees import one_torch_thread

one_thread = pytest.fixture(autouse=True, scope="package")(one_torch_thread)
