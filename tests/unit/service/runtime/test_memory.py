"""imgclf.runtime.memory: the resident memory read from /proc, and the heap handed back."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from imgclf.runtime.memory import rss_bytes, trim_heap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_rss_follows_memory_the_process_touches():
    before = rss_bytes()
    block = np.ones(64 * 2**20, dtype=np.uint8)  # touched: resident
    during = rss_bytes()
    assert before is not None and during is not None
    assert during - before >= 48 * 2**20
    del block
    trim_heap()
    after = rss_bytes()
    assert after is not None and after < during - 48 * 2**20
