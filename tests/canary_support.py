"""scripts/canary_promote.py as a module (it is a script, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from predictflow.settings import PROJECT_ROOT


def canary_promote() -> ModuleType:
    """The script's module, loaded once per process."""
    if (loaded := sys.modules.get("canary_promote")) is not None:
        return loaded
    path = PROJECT_ROOT / "scripts" / "canary_promote.py"
    spec = importlib.util.spec_from_file_location("canary_promote", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["canary_promote"] = module
    spec.loader.exec_module(module)
    return module
