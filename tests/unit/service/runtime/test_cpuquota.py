"""imgclf.runtime.cpuquota: the cgroup CPU quota caps the CPUs a process may use."""

from __future__ import annotations

import os
from pathlib import Path

from imgclf.runtime.cpuquota import available_cpus


def affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_no_cgroup_files_means_the_affinity(tmp_path: Path) -> None:
    assert available_cpus(tmp_path) == affinity()


def test_cgroup_v2_quota_caps_the_count(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == affinity()


def test_cgroup_v1_quota_caps_the_count(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert available_cpus(tmp_path) == affinity()


def test_garbage_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("lots\n")
    assert available_cpus(tmp_path) == affinity()
