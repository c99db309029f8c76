"""The distribution installs one import name, `imgclf`, over the folders service/ and training/.

pyproject.toml maps them with `package-dir` and lists the packages (auto-discovery does not
follow such a mapping); these tests keep that list equal to the tree and read what a real
`pip install .` puts on sys.path from its RECORD.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from imgclf.http.page import FILES as PAGE_FILES

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"imgclf": "service", "imgclf.training": "training"}


def tree_packages() -> set[str]:
    found = set()
    for name, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                found.add(".".join([name, *init.parent.relative_to(ROOT / folder).parts]))
    return found


def test_the_package_list_is_the_tree() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == FOLDERS
    assert set(config["packages"]) == tree_packages()


def test_every_source_folder_is_a_package() -> None:
    """A folder of modules without __init__.py would be left out of the wheel silently."""
    for folder in FOLDERS.values():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                assert (path.parent / "__init__.py").exists(), path


def test_the_page_is_package_data() -> None:
    """The HTTP page's files (service/http/ui/) are not modules: the wheel carries them only
    as package data, which pyproject.toml must name."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["imgclf.http"]
    ui = ROOT / "service" / "http" / "ui"
    names = [f"ui/{p.name}" for p in ui.iterdir()]
    assert {f"ui/{name}" for name, _ in PAGE_FILES.values()} <= set(names)
    for name in names:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


def test_the_pydantic_floor_has_attribute_docstrings() -> None:
    """Every flag's help and the docs tables come from field docstrings
    (`use_attribute_docstrings`), which pydantic has from 2.7 on: below, they are empty."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (floor,) = [m.group(1) for d in deps if (m := re.fullmatch(r"pydantic>=([\d.]+)", d))]
    uses = [
        p for p in (ROOT / "service").rglob("*.py") if "use_attribute_docstrings" in p.read_text()
    ]
    assert uses, "no module uses use_attribute_docstrings: this test is stale"
    assert tuple(int(x) for x in floor.split(".")) >= (2, 7), floor


@pytest.mark.slow
def test_the_installed_distribution_has_one_top_level_name(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "--target", str(target), str(ROOT)],
        check=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    (dist_info,) = target.glob("imgclf-*.dist-info")
    record = [line.split(",")[0] for line in (dist_info / "RECORD").read_text().splitlines()]
    installed = {path.split("/")[0] for path in record if not path.startswith("../")}
    assert installed - {dist_info.name, "bin"} == {"imgclf"}, sorted(installed)
    assert "imgclf/cli.py" in record
    assert "imgclf/training/train.py" in record
    assert "imgclf/_generated/imgclf/v1/image_classifier_pb2.py" in record
    for name, _ in PAGE_FILES.values():
        assert f"imgclf/http/ui/{name}" in record, name
    entry_points = (dist_info / "entry_points.txt").read_text()
    assert "imgclf = imgclf.cli:main" in entry_points
    # the installed copy imports without the checkout (its folders are not on sys.path here)
    out = subprocess.run(
        [sys.executable, "-I", "-c",
         f"import sys; sys.path.insert(0, {str(target)!r}); import imgclf.client.bench.cli; "
         "import imgclf.server; print(imgclf.__file__)"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=True,
    )  # fmt: skip
    assert out.stdout.strip().startswith(str(target / "imgclf")), out.stdout
