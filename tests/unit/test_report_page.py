"""The report page, and the serving path kept free of plotting and MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from predictflow import evaluation, registry, report, training
from predictflow.data import synthetic_customers
from predictflow.model import ChurnModel


@pytest.fixture(scope="module")
def written(small_model: ChurnModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("evaluation")
    split = training.split(synthetic_customers(1500, seed=3))
    cv = training.CrossValidation((0.81, 0.83, 0.8, 0.84, 0.82))
    evaluation.write(evaluation.evaluate_model(small_model, split, cv), directory)
    return directory


def test_the_page_shows_the_metrics_plots_and_deciles(written: Path) -> None:
    summary = json.loads((written / evaluation.SUMMARY_JSON).read_text())
    info = registry.VersionInfo(
        version="3",
        aliases=("champion",),
        run_id="abc123",
        created=datetime(2026, 1, 2, tzinfo=UTC),
        metrics={},
        params={},
        tags={},
    )
    page = report.render_html(info, summary, recomputed=False)
    for name in (*evaluation.IMAGES.values(), evaluation.DECILES_CSV):
        assert f'"{name}"' in page
        assert (written / name).is_file()
    std = summary["cv"]["roc_auc_std"]
    assert f"0.8200 ± {std:.4f}" in page
    assert f"{summary['held_out']['metrics']['roc_auc']:.4f}" in page
    assert "champion" in page and page.count("<tr><td>") == 10
    assert "http" not in page  # self-contained: nothing fetched from elsewhere


def test_html_without_cross_validation() -> None:
    summary = {
        "held_out": {
            "customers": 10,
            "churners": 2,
            "metrics": {"roc_auc": 0.8, "pr_auc": 0.5, "log_loss": 0.4, "brier": 0.1},
        },
        "cv": None,
        "deciles": [],
    }
    info = registry.VersionInfo("1", (), "r", datetime.now(UTC), {}, {}, {})
    assert "not available" in report.render_html(info, summary, recomputed=True)


def test_serving_never_imports_matplotlib_or_mlflow() -> None:
    """The serving path (and the modules that only plot lazily) stay light."""
    code = (
        "import sys\n"
        "import consumers.runner, predictflow.scoring, predictflow.model\n"
        "import predictflow.features, predictflow.cli, predictflow.evaluation\n"
        "import predictflow.report, predictflow.bootstrap\n"
        "print(sorted(m for m in ('matplotlib', 'mlflow', 'sklearn')"
        " if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.stdout.strip() == "[]"
