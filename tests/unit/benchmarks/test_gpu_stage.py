"""benchmarks.gpu_stage: the pieces a wheel travels in, and the device calls that join,
check and install them (no download: a file of random bytes stands for the wheel)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from benchmarks import gpu_stage

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("total", "budget", "extra"),
    [(255_569_273, 42 * MIB, 10 * MIB), (10 * MIB, 40 * MIB, 5 * MIB), (80 * MIB, 40 * MIB, 0)],
)
def test_piece_sizes_cover_the_file_within_each_calls_budget(
    total: int, budget: int, extra: int
) -> None:
    sizes = gpu_stage.piece_sizes(total, budget, extra)
    assert sum(sizes) == total
    assert sizes[0] + extra <= budget
    assert all(0 < s <= budget for s in sizes)


def test_piece_sizes_refuse_small_wheels_over_the_budget() -> None:
    with pytest.raises(ValueError, match="small wheels"):
        gpu_stage.piece_sizes(100, 10, 10)


def test_pieces_join_back_to_the_same_bytes(tmp_path: Path) -> None:
    wheel = tmp_path / "x.whl"
    wheel.write_bytes(os.urandom(3 * MIB + 17))
    sizes = gpu_stage.piece_sizes(wheel.stat().st_size, MIB, MIB // 2)
    pieces = gpu_stage.split(wheel, sizes, tmp_path / "pieces")
    assert [p.name for p in pieces] == [f"ort.part{i:02d}" for i in range(len(sizes))]
    joined = b"".join(p.read_bytes() for p in sorted(pieces))  # the shell glob's order
    assert hashlib.sha256(joined).hexdigest() == gpu_stage.sha256(wheel)


def test_device_calls_carry_one_piece_each_and_the_last_installs_and_runs() -> None:
    pieces = [Path(f".gpu-stage/pieces/ort.part{i:02d}") for i in range(3)]
    calls = gpu_stage.device_calls(
        pieces, "onnxruntime_gpu-1-cp312.whl", "ab" * 32, Path(".gpu-stage/small"), "--short"
    )
    assert len(calls) == 3
    assert calls[0].carry == [str(pieces[0]), ".gpu-stage/small"]
    assert [c.carry for c in calls[1:]] == [[str(pieces[1])], [str(pieces[2])]]
    last = calls[-1].command
    assert "sha256sum -c" in last and "ab" * 32 in last
    assert f"--target {gpu_stage.DEVICE_SITE}" in last
    assert f"PYTHONPATH={gpu_stage.DEVICE_SITE}:$PWD" in last
    assert last.endswith("python3 -m benchmarks.gpu_check run $OUT/gpu-check --short")
    assert all(len(c.command) <= gpu_stage.COMMAND_LIMIT for c in calls)
    assert calls[-1].timeout_s > gpu_stage.RUN_TIMEOUT_S
