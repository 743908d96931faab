"""A feature store that cannot be read: 503 with a clear message, and not ready."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest

from devtools.processes import BentoServer, Workspace, free_port


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def broken_server(
    request: pytest.FixtureRequest, workspace: Workspace
) -> Iterator[BentoServer]:
    if request.param == "sqlite":
        # A registry but no online store: the features were never materialized.
        repo = workspace.root / "repo-unmaterialized"
        shutil.copytree(workspace.root / "feature_repo", repo)
        (repo / "data" / "online_store.db").unlink()
        env = {"PREDICTFLOW_FEAST__REPO_PATH": str(repo)}
    else:
        # Nothing listens on this port.
        env = {
            "PREDICTFLOW_FEAST__ONLINE_STORE": "redis",
            "PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING": f"127.0.0.1:{free_port()}",
        }
    srv = BentoServer(workspace, f"broken-{request.param}", env).wait("/livez")
    yield srv
    srv.stop()


def test_unreadable_store_is_503_with_a_clear_message(
    broken_server: BentoServer,
) -> None:
    r = httpx.post(
        f"{broken_server.url}/predict", json={"customer_id": "7590-VHVEG"}, timeout=60
    )
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "feature_store_unavailable"
    assert r.json()["retryable"] is True
    assert r.headers["retry-after"]
    assert "online feature store unavailable" in r.json()["message"]
    # Where the store lives (Redis address, SQLite path) is in the log only.
    for internal in ("127.0.0.1", "online_store.db", "repo-unmaterialized"):
        assert internal not in r.text


def test_not_ready_while_the_store_cannot_be_read(broken_server: BentoServer) -> None:
    r = httpx.get(f"{broken_server.url}/readyz", timeout=60)
    assert r.status_code == 503
