"""The direct online read returns what Feast's get_online_features returns."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from devtools.processes import Workspace
from predictflow import feast_reads
from predictflow.data import load_telco
from predictflow.feast_reads import DirectRead, RedisDirectRead
from predictflow.features import OnlineFeatures
from predictflow.settings import FeastSettings


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def features(request: pytest.FixtureRequest, workspace: Workspace) -> OnlineFeatures:
    ws = workspace
    if request.param == "redis":
        ws = request.getfixturevalue("redis_workspace")
    settings = FeastSettings(
        repo_path=Path(ws.env["PREDICTFLOW_FEAST__REPO_PATH"]),
        online_store=request.param,
        redis_connection_string=ws.env.get(
            "PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING", "localhost:6379"
        ),
    )
    return OnlineFeatures.open(settings)


def test_direct_read_equals_get_online_features(
    features: OnlineFeatures, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ttl 0: the direct read is in use; on Redis, the one that decodes the
    # hash fields itself.
    redis = features.store.config.online_store.type == "redis"
    assert type(features._direct) is (RedisDirectRead if redis else DirectRead)
    ids = load_telco()["customer_id"].tolist()
    # Every customer, a blank TotalCharges one, unknowns, and a repeat.
    ids = [*ids, "0000-NOBODY", "4472-LVYGI", ids[0], "9999-NEVER"]
    direct = features.get(ids)
    reference = OnlineFeatures(features.store, features.service.name)
    reference._direct = None
    expected = reference.get(ids)
    assert direct == expected
    assert direct[-4] is None and direct[-1] is None
    assert sum(row is not None for row in direct) == len(ids) - 2
    # Same Python types, not only equal values (True == 1, 1 == 1.0).
    for got, want in zip(direct, expected, strict=True):
        if want is None:
            continue
        assert got is not None
        assert {k: type(v) for k, v in got.items()} == {
            k: type(v) for k, v in want.items()
        }
    # Read again: values now come from the decoded-value memo (Redis) ...
    assert features.get(ids) == expected
    # ... and from one that keeps clearing itself when it is full.
    monkeypatch.setattr(feast_reads, "_KNOWN_VALUES", 8)
    if isinstance(features._direct, RedisDirectRead):
        features._direct._known.clear()
        assert features.get(ids) == expected
        assert 0 < len(features._direct._known) <= 8


def test_views_that_expire_rows_fall_back_to_get_online_features() -> None:
    def store(ttl: timedelta | None) -> SimpleNamespace:
        view = SimpleNamespace(ttl=ttl)
        return SimpleNamespace(get_feature_view=lambda name: view)

    service = SimpleNamespace(feature_view_projections=[SimpleNamespace(name="v")])
    assert DirectRead.applies(store(timedelta(0)), service)
    assert DirectRead.applies(store(None), service)
    assert not DirectRead.applies(store(timedelta(days=1)), service)
