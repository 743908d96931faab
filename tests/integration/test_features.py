"""The direct online read returns what Feast's get_online_features returns."""

from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.procs import page_cache_share
from devtools.processes import Workspace
from predictflow import feast_reads
from predictflow.data import load_telco
from predictflow.encoding import FEATURES
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


def test_the_redis_read_counts_its_memo_lookups(redis_workspace: Workspace) -> None:
    from predictflow import metrics

    settings = FeastSettings(
        repo_path=Path(redis_workspace.env["PREDICTFLOW_FEAST__REPO_PATH"]),
        online_store="redis",
        redis_connection_string=redis_workspace.env[
            "PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING"
        ],
    )
    features = OnlineFeatures.open(settings)
    assert type(features._direct) is RedisDirectRead
    lookups = metrics.get().memo_lookups

    def counts() -> dict[tuple[str, str], float]:
        return {
            (memo, result): lookups.labels(memo, result)._value.get()
            for memo in ("redis_key", "field_value")
            for result in ("hit", "miss")
        }

    ids = load_telco()["customer_id"].tolist()[:100]
    start = counts()
    features.get([*ids, "0000-NOBODY"])
    first = {k: v - start[k] for k, v in counts().items()}
    features.get(ids)
    second = {k: v - start[k] - first[k] for k, v in counts().items()}
    # A new reader: every key is new once, then remembered.
    assert first[("redis_key", "miss")] == 101
    assert first[("redis_key", "hit")] == 0
    assert second[("redis_key", "hit")] == 100
    assert second[("redis_key", "miss")] == 0
    # Fields of found customers only; each distinct value decoded once.
    fields = len(FEATURES)
    assert (
        first[("field_value", "hit")] + first[("field_value", "miss")] == 100 * fields
    )
    assert 0 < first[("field_value", "miss")] < 100 * fields
    assert second[("field_value", "hit")] == 100 * fields
    assert second[("field_value", "miss")] == 0


def _resident(path: Path) -> float:
    share = page_cache_share(path)
    assert share is not None
    return share


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _wait_resident(path: Path, share: float, seconds: float = 15) -> float:
    # The kernel reads ahead asynchronously; seconds are ample for the test
    # store (tens of MB).
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _resident(path) < share:
        time.sleep(0.1)
    return _resident(path)


@pytest.mark.parametrize("prefetch", [True, False])
def test_the_sqlite_store_file_is_read_into_the_page_cache_after_a_first_read(
    workspace: Workspace, prefetch: bool
) -> None:
    settings = FeastSettings(
        repo_path=Path(workspace.env["PREDICTFLOW_FEAST__REPO_PATH"]),
        online_store="sqlite",
        sqlite_prefetch=prefetch,
    )
    path = settings.repo_path / "data" / "online_store.db"
    _evict(path)
    # The eviction took: otherwise this test would prove nothing.
    assert _resident(path) < 0.5
    features = OnlineFeatures.open(settings)
    # Not on opening: the first read (a readiness probe) must not queue
    # behind the whole file.
    time.sleep(0.5)
    assert _resident(path) < 0.5
    features.check()
    if not prefetch:
        time.sleep(0.5)
        assert _resident(path) < 0.5
        return
    assert _wait_resident(path, 0.95) >= 0.95


def test_a_replaced_sqlite_store_file_is_read_ahead_after_the_reopen(
    workspace: Workspace, tmp_path: Path
) -> None:
    # A copy of the repository: the shared one's file stays where it is.
    repo = tmp_path / "repo"
    shutil.copytree(Path(workspace.env["PREDICTFLOW_FEAST__REPO_PATH"]), repo)
    settings = FeastSettings(repo_path=repo, online_store="sqlite")
    path = repo / "data" / "online_store.db"
    features = OnlineFeatures.open(settings)
    features.check()
    assert _wait_resident(path, 0.95) >= 0.95
    # Another writer moves a new file (uncached) over the store file.
    new = path.with_name("new.db")
    shutil.copy(path, new)
    _evict(new)
    new.replace(path)
    assert _resident(path) < 0.5
    # A probe always looks at the file: it reopens the store and reads it.
    features.check()
    assert _wait_resident(path, 0.95) >= 0.95
