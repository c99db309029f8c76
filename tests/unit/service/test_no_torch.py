"""The serving path never imports torch: the serving image has none."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[3] / "service"
HEAVY = {"torch", "torchvision", "timm", "training"}


def test_no_module_of_service_imports_torch_or_training() -> None:
    offenders = []
    for path in sorted(SERVICE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in HEAVY]
    assert offenders == []
    assert len(list(SERVICE.rglob("*.py"))) > 10  # the scan really saw the package


def test_starting_the_server_code_loads_no_torch() -> None:
    code = (
        "import sys\n"
        "import imgclf.cli, imgclf.server, imgclf.client, imgclf.dataplane\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(HEAVY)!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_training_commands_without_torch_say_how_to_install() -> None:
    # Make `import torch` fail in the child, as it does in the serving image.
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from imgclf.cli import main\n"
        "sys.exit(main(['train', '--help']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "pip install 'imgclf[train]'" in out.stderr
