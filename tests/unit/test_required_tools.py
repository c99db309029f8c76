"""tests/conftest.py's tool_missing: a skip, or a failure when IMGCLF_REQUIRE_TOOLS=1 (CI)."""

from __future__ import annotations

import pytest

from tests.conftest import REQUIRE_TOOLS, require_executable, tool_missing


def test_a_missing_tool_skips_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_TOOLS, raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="does-not-exist is not installed"):
        require_executable("frobnicator-that-does-not-exist", "/no/such/file")


def test_a_missing_tool_fails_when_tools_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_TOOLS, "1")
    with pytest.raises(pytest.fail.Exception, match="IMGCLF_REQUIRE_TOOLS=1 or CI=true"):
        tool_missing("perf_analyzer is not installed")


def test_ci_requires_tools_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_TOOLS, raising=False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        tool_missing("promtool is not installed")


def test_a_present_tool_is_found() -> None:
    assert require_executable("sh").endswith("sh")
