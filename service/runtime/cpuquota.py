"""How many CPUs this process may really use: affinity and the cgroup CPU quota (containers),
not the host's core count that os.cpu_count() reports."""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def _quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup (v2 cpu.max, or v1 cfs quota/period), None if unlimited."""
    v2 = root / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    v1_quota, v1_period = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
    if v1_quota.is_file() and v1_period.is_file():
        quota_us = int(v1_quota.read_text())
        if quota_us > 0:
            return quota_us / int(v1_period.read_text())
    return None


def available_cpus(cgroup_root: Path = CGROUP) -> int:
    """min(affinity, ceil(cgroup quota)), at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    try:
        quota = _quota(cgroup_root)
    except (OSError, ValueError):
        quota = None
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


@cache
def cpus() -> int:
    """available_cpus() for this process, read once."""
    return available_cpus()
