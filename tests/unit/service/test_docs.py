"""The reference tables in the docs are the ones the code prints (`make docs` rewrites them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclf.doctables import TABLES, embedded

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", sorted(TABLES))
def test_embedded_table_is_current(name: str) -> None:
    file, render = TABLES[name]
    assert embedded((ROOT / file).read_text(), name) == render(), (
        f"{file}: the {name} is stale; run `make docs`"
    )
