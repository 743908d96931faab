"""Canary by alias: scripts/canary_promote.py moves `champion` in a real registry.

The rollout runs in-process on a local MLflow store with real registered
models; the cluster records what it is asked to do and Prometheus answers
with fixed figures (test_canary.py runs the script against a real one).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from predictflow.canary.aliases import Aliases, ChallengerMoved, registry_settings
from predictflow.canary.checks import Thresholds
from predictflow.registry import alias_version
from predictflow.settings import Settings
from tests.canary_support import canary_promote
from tests.registry_support import register, set_alias, small_booster
from tests.unit.test_canary_logic import OK

# MLflow's pyfunc types warn on import when a model is logged in-process.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*Any type hint is inferred:UserWarning"
)

cp = canary_promote()
HEALTHY = OK  # the unit tests' healthy track
FAILING = replace(HEALTHY, error_rate=0.5)


class Cluster:
    """Records the calls; notes where `champion` was when the template moved."""

    def __init__(self, settings: Settings | None) -> None:
        self.settings = settings
        self.calls: list[tuple[str, Any]] = []

    def stable_replicas(self) -> int:
        return 2

    def set_weights(self, stable: int, canary: int) -> None:
        self.calls.append(("weights", (stable, canary)))

    def scale_canary(self, replicas: int) -> None:
        self.calls.append(("canary_replicas", replicas))

    def promote_template(self) -> None:
        champion = None
        if self.settings is not None:
            champion = alias_version(self.settings, "champion")
        self.calls.append(("promote_template", champion))


class Prometheus:
    """The canary's figures are `canary`; `during` runs at each step's query."""

    def __init__(self, canary: Any, during: Any = None) -> None:
        self.canary = canary
        self.during = during

    def stats(self, track: str, window_s: int) -> Any:
        if self.during is not None and track == "canary":
            self.during()
        return self.canary if track == "canary" else HEALTHY


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A registry of this test's own: champion on one version, nothing else."""
    settings = Settings(
        data_dir=tmp_path / "var",
        mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    register(settings, small_booster(1), "champion")
    return settings


def _rollout(
    settings: Settings | None, prometheus: Prometheus, dry_run: bool = False
) -> tuple[int, Cluster]:
    cluster = Cluster(settings)
    aliases = None if settings is None else Aliases(settings, dry_run)
    code = cp.rollout(cluster, prometheus, [10, 50, 100], 0, Thresholds(), 0, aliases)
    return code, cluster


def test_a_passing_canary_moves_champion_to_the_challenger(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    champion = alias_version(settings, "champion")
    challenger = register(settings, small_booster(2), "challenger")
    code, cluster = _rollout(settings, Prometheus(HEALTHY))
    assert code == cp.EXIT_PROMOTED
    assert alias_version(settings, "champion") == challenger
    assert alias_version(settings, "challenger") == challenger
    # champion moved before stable took the canary's template
    assert ("promote_template", challenger) in cluster.calls
    assert cluster.calls[-2:] == [("weights", (100, 0)), ("canary_replicas", 0)]
    log = capsys.readouterr().err
    assert f"champion moved from version {champion} to {challenger}" in log


def test_a_rolled_back_canary_leaves_champion_where_it_was(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    champion = alias_version(settings, "champion")
    challenger = register(settings, small_booster(2), "challenger")
    code, cluster = _rollout(settings, Prometheus(FAILING))
    assert code == cp.EXIT_ROLLED_BACK
    assert alias_version(settings, "champion") == champion
    assert alias_version(settings, "challenger") == challenger
    assert not [c for c in cluster.calls if c[0] == "promote_template"]
    log = capsys.readouterr().err
    assert "ROLLBACK at 10%" in log
    assert f"champion stays version {champion}" in log


def test_no_challenger_promotes_the_template_only(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    champion = alias_version(settings, "champion")
    register(settings, small_booster(2), "someone-elses")
    code, cluster = _rollout(settings, Prometheus(HEALTHY))
    assert code == cp.EXIT_PROMOTED
    assert alias_version(settings, "champion") == champion
    assert ("promote_template", champion) in cluster.calls
    log = capsys.readouterr().err
    assert "no challenger alias in the registry" in log
    assert f"champion stays version {champion}" in log


def test_no_registry_promotes_the_template_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, cluster = _rollout(None, Prometheus(HEALTHY))
    assert code == cp.EXIT_PROMOTED
    assert ("promote_template", None) in cluster.calls
    log = capsys.readouterr().err
    assert "no MLflow registry configured" in log
    assert "champion not touched" in log


def test_a_challenger_moved_mid_canary_is_not_promoted(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """What was judged is the version read at the start; a newer one was not."""
    champion = alias_version(settings, "champion")
    register(settings, small_booster(2), "challenger")
    newer = register(settings, small_booster(3), "next")
    moved = Prometheus(HEALTHY, during=lambda: set_alias(settings, "challenger", newer))
    with pytest.raises(ChallengerMoved):
        _rollout(settings, moved)
    assert alias_version(settings, "champion") == champion
    assert "champion not moved" in capsys.readouterr().err


def test_a_dry_run_prints_the_champion_move_and_makes_none(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    champion = alias_version(settings, "champion")
    challenger = register(settings, small_booster(2), "challenger")
    code, _ = _rollout(settings, Prometheus(HEALTHY), dry_run=True)
    assert code == cp.EXIT_PROMOTED
    assert alias_version(settings, "champion") == champion
    out = capsys.readouterr()
    (line,) = [json.loads(x) for x in out.out.splitlines()]
    assert line == {
        "kind": "MLflowAlias",
        "model": settings.mlflow.model_name,
        "name": "champion",
        "patch": {"version": challenger},
    }
    assert f"champion would move (dry run) from version {champion}" in out.err


def test_the_registry_is_the_one_named_on_purpose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Never the settings' local SQLite fallback: that is not the cluster's."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PREDICTFLOW_MLFLOW__TRACKING_URI", raising=False)
    assert registry_settings(None) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow-env:5000")
    found = registry_settings(None)
    assert found is not None and found.tracking_uri == "http://mlflow-env:5000"
    monkeypatch.setenv("PREDICTFLOW_MLFLOW__TRACKING_URI", "http://mlflow-pf:5000")
    found = registry_settings(None)
    assert found is not None and found.tracking_uri == "http://mlflow-pf:5000"
    found = registry_settings("http://flag:5000")
    assert found is not None and found.tracking_uri == "http://flag:5000"
