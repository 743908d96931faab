"""`bentoml build` packs the service, and the built Bento serves /predict."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from devtools.processes import BIN, ROOT, BentoServer, Workspace


@pytest.fixture(scope="module")
def bento_tag(workspace: Workspace) -> str:
    done = subprocess.run(
        [str(BIN / "bentoml"), "build", "--output", "tag", str(ROOT)],
        env=workspace.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("__tag__:")]
    return line.removeprefix("__tag__:")


@pytest.fixture(scope="module")
def bento_server(workspace: Workspace, bento_tag: str) -> Iterator[BentoServer]:
    srv = BentoServer(workspace, "bento", target=bento_tag).wait()
    yield srv
    srv.stop()


def test_the_bento_packs_the_service_code_and_the_model(
    workspace: Workspace, bento_tag: str
) -> None:
    name, version = bento_tag.split(":")
    bento_dir = Path(workspace.env["BENTOML_HOME"]) / "bentos" / name / version
    info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    (service,) = info["services"]
    (model,) = service["models"]
    assert model["tag"].startswith("churn-predictor:")
    assert model["tag"] != "churn-predictor:latest"  # resolved and pinned
    src = bento_dir / "src"
    for path in (
        "service.py",
        "rest/door.py",
        "predictflow/scoring.py",
        "consumers/runner.py",
        "feature_repo/feature_definitions.py",
        "feature_repo/feature_store.yaml",
        "feature_repo/feature_store.redis.yaml",
        "data/telco_customer_churn.csv",
    ):
        assert (src / path).is_file(), path
    assert not (src / "tests").exists()
    routes = {r["route"] for r in info["schema"]["routes"]}
    assert {"/predict", "/predict_batch"} <= routes


def test_the_built_bento_serves_predict(bento_server: BentoServer) -> None:
    r = httpx.post(
        f"{bento_server.url}/predict", json={"customer_id": "7590-VHVEG"}, timeout=30
    )
    assert r.status_code == 200, r.text
    assert 0.0 <= r.json()["churn_probability"] <= 1.0
