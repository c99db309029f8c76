"""The memory budget on a real server: the heaviest legal inputs at once (benchmarks/memory.py,
short) keep the server's resident memory within its budget, refusals beyond it are
RESOURCE_EXHAUSTED, and the server serves afterwards; an unauthenticated call's message is
never read."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import memory as memory_bench
from benchmarks import rss_bytes
from imgclf.client.bench.launcher import ServerProcess, Target, start_server

BUDGET = 256 << 20
"""The server's --memory-budget-bytes: the default message limit is then 4 MiB."""
SLACK = 1.25
"""What the stated bound allows beyond the budget (SECURITY.md): gRPC's own buffers and the
allocator's, outside the accounting."""
TOKEN = "memory-test-token"


@pytest.fixture(scope="module")
def server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        tiny_repo, tmp_path_factory.mktemp("memory-server"),
        "--memory-budget-bytes", str(BUDGET), "--auth-token", TOKEN,
    )  # fmt: skip
    yield proc
    proc.stop()


def args(*extra: str) -> argparse.Namespace:
    return memory_bench.get_args_parser().parse_args(
        ["--model", "tiny", "--concurrency", "8", "--requests", "1", "--settle", "0.5", *extra]
    )


def test_heaviest_inputs_stay_within_the_budget_and_the_server_serves_on(
    server: ServerProcess,
) -> None:
    target = Target(server.target, server.metrics_url, server.proc.pid)
    opts = args("--phases", "messages", "png16", "--message-mib", "3.9")
    report = asyncio.run(
        memory_bench.measure(
            target, opts, log=print, metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
    )
    messages, png16 = report.phases
    assert set(messages.codes) <= {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}, messages.codes
    assert set(png16.codes) <= {"OK", "RESOURCE_EXHAUSTED"}, png16.codes
    assert png16.codes.get("OK", 0) >= 1, png16.codes
    grown = report.peak_mib - report.baseline_mib
    assert grown <= SLACK * BUDGET / 2**20, f"grew {grown:.0f} MiB over a {BUDGET >> 20} MiB budget"
    assert report.serves_after


def test_unauthenticated_messages_are_not_read(server: ServerProcess) -> None:
    """Eight 3.9 MiB calls without the token: refused before their bodies are read, so the
    server grows by much less than the 31 MiB they carry."""
    target = Target(server.target, server.metrics_url, server.proc.pid)
    before = rss_bytes(server.proc.pid) / 2**20
    phase = asyncio.run(
        memory_bench.measure_unauthenticated(target, args("--message-mib", "3.9"), log=print)
    )
    assert phase.codes == {"UNAUTHENTICATED": 8}, phase.codes
    # Read, the bodies alone would add their 31 MiB (and the copies made of them); refused
    # unread, what grows is gRPC's flow-control windows (seen: 11-12.3 MiB).
    carried_mib = phase.payload_bytes * phase.calls / 2**20
    assert phase.peak_mib - before < carried_mib / 2, (before, carried_mib, phase)
