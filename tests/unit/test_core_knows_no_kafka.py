"""The scoring core (`predictflow/`) knows no Kafka: that lives in `consumers/`.

DESIGN.md: nothing in `predictflow/` knows about HTTP or Kafka. A lazy
`import aiokafka` inside a function escapes an import-time check, so the
source is read as well.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import predictflow

CORE = Path(predictflow.__file__).parent
ROOT = CORE.parent

IMPORT_EVERY_CORE_MODULE = """
import importlib, pkgutil, sys
import predictflow
for module in pkgutil.walk_packages(predictflow.__path__, "predictflow."):
    importlib.import_module(module.name)
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] == "aiokafka")))
"""


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_core_module_imports_aiokafka_not_even_lazily() -> None:
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in CORE.rglob("*.py")
        if any(name.split(".")[0] == "aiokafka" for name in _imported(path))
    )
    assert offenders == []


def test_importing_every_core_module_loads_no_aiokafka() -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_CORE_MODULE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() == ""
