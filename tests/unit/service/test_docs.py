"""The README's configuration table is the one the settings class prints."""

from __future__ import annotations

from pathlib import Path

from service.repository import config_table
from service.settings import settings_table

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"


def test_readme_configuration_table_is_current() -> None:
    text = README.read_text()
    start = text.index("<!-- settings-table:start -->") + len("<!-- settings-table:start -->")
    end = text.index("<!-- settings-table:end -->")
    assert text[start:end].strip() == settings_table(), (
        "README configuration table is stale: paste `python -m service.settings`"
    )


def test_model_config_table_is_current() -> None:
    text = (ROOT / "docs" / "models.md").read_text()
    start = text.index("<!-- model-config-table:start -->") + len(
        "<!-- model-config-table:start -->"
    )
    end = text.index("<!-- model-config-table:end -->")
    assert text[start:end].strip() == config_table(), (
        "docs/models.md knob table is stale: paste service.repository.config_table()"
    )
