"""The README's configuration table is the one the settings class prints."""

from __future__ import annotations

from pathlib import Path

from service.settings import settings_table

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_configuration_table_is_current() -> None:
    text = README.read_text()
    start = text.index("<!-- settings-table:start -->") + len("<!-- settings-table:start -->")
    end = text.index("<!-- settings-table:end -->")
    assert text[start:end].strip() == settings_table(), (
        "README configuration table is stale: paste `python -m service.settings`"
    )
