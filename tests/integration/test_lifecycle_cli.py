"""`predictflow train`, `models`, `promote` and `report` on a bootstrapped install.

The session's workspace is shared with the serving tests, which compare the
served model with the registry's champion: whatever these tests move, the
module fixture puts back (champion on its bootstrap version, no extra alias).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from devtools.processes import Workspace
from predictflow import evaluation

SEED = 3
#: An alias of these tests' own, so no other test's alias is touched.
QA_ALIAS = "lifecycle-qa"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Trained:
    """What `train --seed` printed, and the registry before it ran."""

    stdout: str
    before: list[dict[str, Any]]
    champion_before: str


def cli_models(ws: Workspace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(ws.run("models", "--json").stdout)
    return out


def models(ws: Workspace) -> list[dict[str, Any]]:
    """The registry read in-process: quicker than a CLI start per check."""
    from predictflow import registry
    from predictflow.settings import MlflowSettings, Settings

    settings = Settings(
        data_dir=ws.root / "var",
        mlflow=MlflowSettings(tracking_uri=tracking_uri(ws)),
    )
    return [v.as_json() for v in registry.list_versions(settings)]


def champion(ws: Workspace) -> str:
    (version,) = [m["version"] for m in models(ws) if "champion" in m["aliases"]]
    return str(version)


def tracking_uri(ws: Workspace) -> str:
    return f"sqlite:///{ws.root / 'var' / 'mlflow.db'}"


@pytest.fixture(scope="module")
def trained(workspace: Workspace) -> Iterator[Trained]:
    before = models(workspace)
    original = champion(workspace)
    done = workspace.run("train", "--seed", str(SEED))
    yield Trained(done.stdout, before, original)
    # Put back what the serving tests rely on, even when a test failed.
    workspace.run("promote", original)
    from mlflow import MlflowClient

    uri = tracking_uri(workspace)
    client = MlflowClient(uri, uri)
    if QA_ALIAS in client.get_registered_model("churn-predictor").aliases:
        client.delete_registered_model_alias("churn-predictor", QA_ALIAS)


def new_version(t: Trained) -> str:
    match = re.search(r"^registered churn-predictor version (\d+) ", t.stdout, re.M)
    assert match, t.stdout
    return match.group(1)


def test_train_registers_a_version_and_applies_the_champion_rule(
    workspace: Workspace, trained: Trained
) -> None:
    version = new_version(trained)
    assert int(version) == max(int(m["version"]) for m in trained.before) + 1
    held_out = re.search(r"^held-out ROC AUC (\S+)$", trained.stdout, re.M)
    assert held_out, trained.stdout
    auc = float(held_out[1])
    cv = re.search(r"^CV ROC AUC (\S+) ± (\S+) \(5 folds\)$", trained.stdout, re.M)
    assert cv, trained.stdout
    after = {m["version"]: m for m in models(workspace)}
    mine = after[version]
    assert mine["seed"] == SEED
    assert mine["roc_auc"] == pytest.approx(auc, abs=5e-5)
    assert mine["cv_roc_auc_mean"] == pytest.approx(float(cv[1]), abs=5e-5)
    assert mine["cv_roc_auc_std"] == pytest.approx(float(cv[2]), abs=5e-5)
    assert 0.8 < mine["cv_roc_auc_mean"] < 0.9 and mine["cv_roc_auc_std"] >= 0
    old = {m["version"]: m for m in trained.before}[trained.champion_before]
    should_move = mine["roc_auc"] >= old["roc_auc"]
    assert ("champion" in mine["aliases"]) is should_move
    if should_move:
        assert f"champion moved to version {version}" in trained.stdout
    else:
        assert f"champion stays version {trained.champion_before}" in trained.stdout
        assert "champion" in after[trained.champion_before]["aliases"]


def test_models_json_lists_every_version(
    workspace: Workspace, trained: Trained
) -> None:
    listed = cli_models(workspace)
    assert listed == models(workspace)
    assert [m["version"] for m in listed] == [
        str(v) for v in range(1, int(new_version(trained)) + 1)
    ]
    for m in listed:
        assert {"version", "aliases", "roc_auc", "created"} <= set(m)
        if m["seed"] is not None:  # trained here; other tests register bare ones
            assert 0.5 < m["roc_auc"] <= 1.0
        else:
            assert m["roc_auc"] is None or 0.5 < m["roc_auc"] <= 1.0
        assert datetime.fromisoformat(m["created"]).tzinfo is not None
    assert sum("champion" in m["aliases"] for m in listed) == 1
    table = workspace.run("models").stdout
    assert table.splitlines()[0].split()[:3] == ["VERSION", "ALIASES", "ROC"]
    assert len(table.splitlines()) == len(listed) + 1


def test_promote_moves_the_alias(workspace: Workspace, trained: Trained) -> None:
    version = new_version(trained)
    other = trained.champion_before if version != trained.champion_before else "1"
    done = workspace.run("promote", version)
    assert done.stdout.strip().endswith(f"-> {version}")
    assert champion(workspace) == version
    workspace.run("promote", other)
    assert champion(workspace) == other
    # Another alias moves alone.
    workspace.run("promote", version, "--alias", QA_ALIAS)
    by_version = {m["version"]: m["aliases"] for m in models(workspace)}
    assert QA_ALIAS in by_version[version]
    assert "champion" in by_version[other]


@pytest.mark.parametrize("bad", ["999", "not-a-version"])
def test_promote_refuses_a_version_that_does_not_exist(
    workspace: Workspace, trained: Trained, bad: str
) -> None:
    before = champion(workspace)
    with pytest.raises(subprocess.CalledProcessError) as failed:
        workspace.run("promote", bad)
    assert failed.value.returncode == 1
    assert f"has no version {bad!r}" in failed.value.stderr
    assert "champion not moved" in failed.value.stderr
    assert champion(workspace) == before


def test_bootstrap_does_not_retrain_a_recipe_already_registered(
    workspace: Workspace, trained: Trained
) -> None:
    """With a `train --seed` version as champion, bootstrap keeps it and trains nothing.

    In-process, so the Bento store (served by other tests) is left alone.
    """
    from predictflow import bootstrap
    from predictflow.settings import MlflowSettings, Settings

    settings = Settings(
        data_dir=workspace.root / "var",
        mlflow=MlflowSettings(tracking_uri=tracking_uri(workspace)),
    )
    version = new_version(trained)
    workspace.run("promote", version)
    try:
        assert bootstrap.train_if_needed(settings) is False
        assert len(models(workspace)) == int(version)
        assert champion(workspace) == version
    finally:
        workspace.run("promote", trained.champion_before)


def check_report(directory: Path) -> str:
    page = (directory / "index.html").read_text(encoding="utf-8")
    for name in evaluation.IMAGES.values():
        assert (directory / name).read_bytes().startswith(PNG_MAGIC), name
        assert f'src="{name}"' in page
    assert (directory / evaluation.DECILES_CSV).is_file()
    return page


def test_report_writes_the_page_with_the_four_plots(
    workspace: Workspace, trained: Trained
) -> None:
    version = champion(workspace)
    done = workspace.run("report")
    directory = workspace.root / "var" / "reports" / version
    assert f"report of version {version} (from the logged run)" in done.stdout
    page = check_report(directory)
    logged = {m["version"]: m for m in models(workspace)}[version]
    assert f"{logged['cv_roc_auc_mean']:.4f} ± {logged['cv_roc_auc_std']:.4f}" in page
    assert f"{logged['roc_auc']:.4f}" in page


def test_a_recomputed_report_matches_what_training_logged(
    workspace: Workspace, trained: Trained
) -> None:
    version = new_version(trained)
    done = workspace.run("report", "--version", version, "--recompute")
    assert f"report of version {version} (recomputed)" in done.stdout
    directory = workspace.root / "var" / "reports" / version
    check_report(directory)
    summary = json.loads((directory / evaluation.SUMMARY_JSON).read_text())
    logged = {m["version"]: m for m in models(workspace)}[version]
    assert summary["held_out"]["customers"] == 1409
    assert summary["held_out"]["metrics"]["roc_auc"] == pytest.approx(
        logged["roc_auc"], abs=1e-9
    )
    assert summary["cv"]["roc_auc_mean"] == pytest.approx(
        logged["cv_roc_auc_mean"], abs=1e-9
    )


def test_report_refuses_a_version_that_does_not_exist(
    workspace: Workspace, trained: Trained
) -> None:
    with pytest.raises(subprocess.CalledProcessError) as failed:
        workspace.run("report", "--version", "999")
    assert failed.value.returncode == 1
    assert "has no version '999'" in failed.value.stderr
