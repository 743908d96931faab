from __future__ import annotations

from pathlib import Path

from predictflow.settings import Settings
from predictflow.settings_doc import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def _leaves(model: type) -> int:
    count = 0
    for info in model.model_fields.values():  # type: ignore[attr-defined]
        nested = info.annotation
        if isinstance(nested, type) and hasattr(nested, "model_fields"):
            count += _leaves(nested)
        else:
            count += 1
    return count


def test_the_settings_reference_is_generated_from_the_code() -> None:
    assert DOC.read_text() == render(), "stale docs/settings.md: run make settings-doc"


def test_every_setting_has_a_row_and_a_meaning() -> None:
    rows = [line for line in render().splitlines() if line.startswith("| `")]
    assert len(rows) == _leaves(Settings)
    assert all(not row.endswith("|  |") for row in rows)
    assert any("PREDICTFLOW_KAFKA__SASL_PASSWORD" in row for row in rows)
