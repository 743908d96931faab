"""The settings reference (docs/settings.md), generated from `Settings` itself.

    python -m predictflow.settings_doc > docs/settings.md    # make settings-doc

A unit test fails when the committed file differs from what this renders, so
the reference cannot fall behind the code.
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from predictflow.settings import PROJECT_ROOT, Settings

HEADER = """# Settings

Every setting comes from the environment (`predictflow/settings.py`): prefix
`PREDICTFLOW_`, `__` between a section and its field
(`PREDICTFLOW_FEAST__ONLINE_STORE=redis`). Paths are relative to the
repository unless absolute. Secrets (`SecretStr`) never show in logs or
settings dumps.

Generated from the code by `make settings-doc`; do not edit by hand.
"""


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return "(section)"
    value = info.default
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, Path):
        try:
            relative = value.relative_to(PROJECT_ROOT)
        except ValueError:
            return f"`{value}`"
        return f"`{relative}/`" if value.suffix == "" else f"`{relative}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _choices(annotation: Any) -> list[str]:
    """The values of a `Literal` (also inside `X | None`)."""
    if typing.get_origin(annotation) is typing.Literal:
        return [str(v) for v in typing.get_args(annotation)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (
        typing.Union,
    ):
        return [c for arg in typing.get_args(annotation) for c in _choices(arg)]
    return []


def _rows(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str, str]]:
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _rows(annotation, f"{prefix}{name.upper()}__")
            continue
        variable = f"`{prefix}{name.upper()}`"
        aliases = getattr(info.validation_alias, "choices", None)
        if aliases:
            variable = " or ".join(f"`{a}`" for a in aliases)
        meaning = (info.description or "").replace("|", "\\|").replace("\n", " ")
        choices = _choices(annotation)
        if choices:
            meaning += " One of: " + ", ".join(f"`{c}`" for c in choices) + "."
        yield variable, _default(info), meaning


def render() -> str:
    """docs/settings.md, as the code defines the settings."""
    lines = [HEADER, "| variable | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| {v} | {d} | {m} |" for v, d, m in _rows(Settings, "PREDICTFLOW_")]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Write the reference to standard output."""
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
