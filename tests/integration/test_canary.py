"""scripts/canary_promote.py and the Argo Rollouts AnalysisTemplate against a real
Prometheus scraping real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.processes import ROOT, BentoServer, PrometheusServer, Workspace
from predictflow.registry import alias_version
from predictflow.settings import Settings
from tests.canary_support import analyse
from tests.registry_support import register, small_booster

# MLflow's pyfunc types warn on import when a model is logged in-process.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*Any type hint is inferred:UserWarning"
)

CUSTOMERS = ["7590-VHVEG", "5575-GNVDE", "3668-QPYBK", "7795-CFOCW", "9237-HQITU"]


@pytest.fixture(scope="module")
def stable(workspace: Workspace) -> Iterator[BentoServer]:
    srv = BentoServer(workspace, "stable").wait()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def healthy_canary(workspace: Workspace) -> Iterator[BentoServer]:
    srv = BentoServer(workspace, "canary").wait()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def failing_canary(workspace: Workspace) -> Iterator[BentoServer]:
    """A canary whose feature store was never materialized: every request 503s."""
    import shutil

    repo = workspace.root / "repo-canary-broken"
    shutil.copytree(workspace.root / "feature_repo", repo)
    (repo / "data" / "online_store.db").unlink()
    env = {"PREDICTFLOW_FEAST__REPO_PATH": str(repo)}
    srv = BentoServer(workspace, "canary-broken", env).wait("/livez")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """champion on version 1, challenger on version 2 (dry runs move nothing)."""
    root = tmp_path_factory.mktemp("canary-registry")
    settings = Settings(
        data_dir=root / "var",
        mlflow={"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
    )
    register(settings, small_booster(1), "champion")
    register(settings, small_booster(2), "challenger")
    return settings


class Load:
    """Steady /predict traffic to some servers until stopped."""

    def __init__(self, *servers: BentoServer, per_second: float = 25) -> None:
        self.servers = servers
        self.pause = 1.0 / per_second
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not self.stop_event.wait(self.pause):
                for srv in self.servers:
                    client.post(
                        f"{srv.url}/predict",
                        json={"customer_id": CUSTOMERS[i % len(CUSTOMERS)]},
                    )
                i += 1

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


def _promote(
    prometheus: PrometheusServer, registry: Settings | None
) -> tuple[int, list[dict[str, object]], str]:
    # Only the registry named here: MLflow exports MLFLOW_TRACKING_URI for
    # whichever test set a tracking URI in this process before.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "PREDICTFLOW_MLFLOW__TRACKING_URI")
    }
    registry_args = (
        [] if registry is None else ["--mlflow-tracking-uri", registry.tracking_uri]
    )
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "canary_promote.py"),
            "--prometheus",
            prometheus.url,
            "--dry-run",
            "--steps",
            "10,30,50,100",
            "--window",
            "5",
            "--settle",
            "2",
            "--stable-replicas",
            "3",
            "--min-requests",
            "10",
            *registry_args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    patches = [json.loads(line) for line in done.stdout.splitlines()]
    return done.returncode, patches, done.stderr


def _summary(patches: list[dict[str, object]]) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for p in patches:
        patch = p["patch"]
        assert isinstance(patch, dict)
        if p["kind"] == "HTTPRoute":
            (rule,) = patch["spec"]["rules"]
            # the patch keeps the route's matches: a merge patch replaces lists
            assert [m["path"]["value"] for m in rule["matches"]] == [
                "/predict",
                "/predict_batch",
            ]
            weights = {r["name"]: r["weight"] for r in rule["backendRefs"]}
            out.append(
                (
                    "weights",
                    (
                        weights["churn-predictor-stable"],
                        weights["churn-predictor-canary"],
                    ),
                )
            )
        elif p["kind"] == "Deployment/scale":
            out.append(("canary_replicas", patch["spec"]["replicas"]))
        elif p["kind"] == "MLflowAlias":
            out.append((str(p["name"]), patch["version"]))
        else:
            out.append(("promote", p["name"]))
    return out


def _rollout_under_load(
    workdir: Path,
    stable: BentoServer,
    canary: BentoServer,
    registry: Settings | None = None,
) -> tuple[int, list[tuple[str, object]], str]:
    """A real Prometheus scrapes both tracks while they serve; run the script."""
    targets = {"stable": stable.url[7:], "canary": canary.url[7:]}
    prometheus = PrometheusServer(workdir / "prom", targets)
    try:
        with Load(stable, canary):
            code, patches, log = _promote(prometheus, registry)
    finally:
        prometheus.stop()
    return code, _summary(patches), log


def test_a_healthy_canary_is_promoted_step_by_step(
    tmp_path: Path,
    stable: BentoServer,
    healthy_canary: BentoServer,
    registry: Settings,
) -> None:
    code, patches, log = _rollout_under_load(tmp_path, stable, healthy_canary, registry)
    assert code == 0, log
    assert patches == [
        ("canary_replicas", 1), ("weights", (90, 10)),
        ("canary_replicas", 1), ("weights", (70, 30)),
        ("canary_replicas", 3), ("weights", (50, 50)),
        ("canary_replicas", 3), ("weights", (0, 100)),
        ("champion", "2"),
        ("promote", "churn-predictor"), ("weights", (100, 0)), ("canary_replicas", 0),
    ]  # fmt: skip
    assert "PROMOTED" in log
    assert "champion would move (dry run) from version 1 to 2" in log
    assert alias_version(registry, "champion") == "1"  # a dry run moves nothing


def test_a_failing_canary_is_rolled_back_with_the_reason(
    tmp_path: Path,
    stable: BentoServer,
    failing_canary: BentoServer,
    registry: Settings,
) -> None:
    code, patches, log = _rollout_under_load(tmp_path, stable, failing_canary, registry)
    assert code == 2, log
    assert patches == [
        ("canary_replicas", 1), ("weights", (90, 10)),
        ("weights", (100, 0)), ("canary_replicas", 0),
    ]  # fmt: skip
    assert "ROLLBACK at 10%" in log
    assert "5xx rate" in log
    assert "champion stays version 1" in log


def test_no_prometheus_is_an_error_exit(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "canary_promote.py"),
         "--prometheus", "http://127.0.0.1:9", "--dry-run", "--window", "1",
         "--settle", "0", "--steps", "10"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "cannot run" in done.stderr
    # traffic was sent back to stable before giving up
    route = json.loads(done.stdout.splitlines()[-2])
    refs = route["patch"]["spec"]["rules"][0]["backendRefs"]
    assert {r["name"]: r["weight"] for r in refs}["churn-predictor-canary"] == 0


# --- the Argo Rollouts AnalysisTemplate on the same real Prometheus ----------

WINDOW_S = 10


def _analysis_under_load(
    workdir: Path, stable: BentoServer, canary: BentoServer, *loaded: BentoServer
) -> dict[str, tuple[str, object]]:
    """Scrape both tracks while `loaded` serve; one analysis after a window."""
    targets = {"stable": stable.url[7:], "canary": canary.url[7:]}
    prometheus = PrometheusServer(workdir / "prom", targets)
    try:
        with Load(*loaded):
            time.sleep(WINDOW_S + 3)  # the window filled, and its last scrape
            return analyse(prometheus.url, f"{WINDOW_S}s")
    finally:
        prometheus.stop()


def test_the_analysis_passes_a_healthy_canary(
    tmp_path: Path, stable: BentoServer, healthy_canary: BentoServer
) -> None:
    phases = _analysis_under_load(
        tmp_path, stable, healthy_canary, stable, healthy_canary
    )
    assert {name: phase for name, (phase, _) in phases.items()} == {
        "canary-traffic": "Successful",
        "error-rate": "Successful",
        "p99-latency": "Successful",
        "kafka-error-rate": "Successful",
        "score-shift": "Successful",
    }, phases
    # judged on data, not waved through on empty answers
    for name in ("canary-traffic", "error-rate", "p99-latency", "score-shift"):
        assert phases[name][1], (name, phases[name])


def test_the_analysis_fails_a_failing_canary(
    tmp_path: Path, stable: BentoServer, failing_canary: BentoServer
) -> None:
    phases = _analysis_under_load(
        tmp_path, stable, failing_canary, stable, failing_canary
    )
    assert phases["canary-traffic"][0] == "Successful", phases
    phase, result = phases["error-rate"]
    assert phase == "Failed", phases
    assert isinstance(result, list) and float(result[0]) > 0.5


def test_the_analysis_is_inconclusive_without_canary_traffic(
    tmp_path: Path, stable: BentoServer, healthy_canary: BentoServer
) -> None:
    phases = _analysis_under_load(tmp_path, stable, healthy_canary, stable)
    assert phases.pop("canary-traffic")[0] == "Inconclusive"
    assert {phase for phase, _ in phases.values()} == {"Successful"}, phases
