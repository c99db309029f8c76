"""imgclf.budget: reserve or refuse at once, release, trim after large releases."""

from __future__ import annotations

import threading

import pytest

from imgclf import budget as budget_module
from imgclf.budget import MemoryBudget, configure_allocator
from imgclf.errors import MemoryExhausted
from imgclf.settings import ServerSettings


def test_reserves_within_the_limit_and_refuses_beyond_it_at_once() -> None:
    budget = MemoryBudget(100, trim=lambda: None)
    assert budget.try_reserve(60)
    assert not budget.try_reserve(41)  # nothing reserved by a refusal
    assert budget.held == 60
    with pytest.raises(MemoryExhausted, match="memory budget") as refused:
        budget.reserve(41, "a message")
    assert refused.value.code == "RESOURCE_EXHAUSTED" and refused.value.reason == "memory_budget"
    with budget.held_for(40, "a decode"):
        assert budget.held == 100
    budget.release(60)
    assert budget.held == 0 and budget.peak == 100


def test_trims_shortly_after_large_releases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget_module, "TRIM_DELAY_S", 0.0)
    trimmed = threading.Event()
    budget = MemoryBudget(budget_module.TRIM_AFTER_BYTES * 2, trim=trimmed.set)
    budget.reserve(budget_module.TRIM_AFTER_BYTES - 1, "small")
    budget.release(budget_module.TRIM_AFTER_BYTES - 1)
    assert not trimmed.wait(0.1)
    budget.reserve(budget_module.TRIM_AFTER_BYTES, "a worst case never allocated")
    budget.release(budget_module.TRIM_AFTER_BYTES, trim=False)
    assert not trimmed.wait(0.1)
    budget.reserve(1, "the byte that crosses")
    budget.release(1)
    assert trimmed.wait(5)


def test_allocator_settings_apply_on_glibc() -> None:
    assert configure_allocator() is (
        budget_module._libc() is not None and hasattr(budget_module._libc(), "mallopt")
    )


def test_default_message_limit_follows_the_budget() -> None:
    settings = ServerSettings(memory_budget_bytes=640 << 20)
    assert settings.message_limit == 10 << 20
    assert ServerSettings(max_message_bytes=4096).message_limit == 4096
