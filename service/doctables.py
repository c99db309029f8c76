"""Keep the reference tables in the docs equal to the code: `make docs` rewrites them.

README.md embeds the server settings table, docs/models.md the model config.json table, each
between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers; tests/unit/service/test_docs.py
fails when they drift.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from imgclf.models.repository import config_table
from imgclf.settings import settings_table

TABLES: dict[str, tuple[str, Callable[[], str]]] = {
    "settings-table": ("README.md", settings_table),
    "model-config-table": ("docs/models.md", config_table),
}


def embedded(text: str, name: str) -> str:
    """The table between the markers `name` in `text`."""
    start = text.index(f"<!-- {name}:start -->") + len(f"<!-- {name}:start -->")
    return text[start : text.index(f"<!-- {name}:end -->")].strip()


def rewrite(root: Path) -> list[str]:
    """Rewrite every embedded table from the code; returns the files changed."""
    changed = []
    for name, (file, render) in TABLES.items():
        path = root / file
        text = path.read_text()
        old = embedded(text, name)
        new = render()
        if old != new:
            path.write_text(text.replace(old, new, 1))
            changed.append(file)
    return changed


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    print("\n".join(f"rewrote {f}" for f in rewrite(root)) or "tables are current")
