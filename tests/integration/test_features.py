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
from predictflow.errors import FeatureStoreUnavailable
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


def _redis_features(ws: Workspace) -> OnlineFeatures:
    settings = FeastSettings(
        repo_path=Path(ws.env["PREDICTFLOW_FEAST__REPO_PATH"]),
        online_store="redis",
        redis_connection_string=ws.env["PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING"],
    )
    features = OnlineFeatures.open(settings)
    assert type(features._direct) is RedisDirectRead
    return features


def test_the_redis_read_counts_its_memo_lookups(redis_workspace: Workspace) -> None:
    from predictflow import metrics

    features = _redis_features(redis_workspace)
    lookups = metrics.get().memo_lookups

    def counts() -> dict[tuple[str, str], float]:
        return {
            ("field_value", result): lookups.labels("field_value", result)._value.get()
            for result in ("hit", "miss")
        }

    ids = load_telco()["customer_id"].tolist()[:100]
    start = counts()
    features.get([*ids, "0000-NOBODY"])
    first = {k: v - start[k] for k, v in counts().items()}
    features.get(ids)
    second = {k: v - start[k] - first[k] for k, v in counts().items()}
    # Fields of found customers only; each distinct value decoded once.
    fields = len(FEATURES)
    assert (
        first[("field_value", "hit")] + first[("field_value", "miss")] == 100 * fields
    )
    assert 0 < first[("field_value", "miss")] < 100 * fields
    assert second[("field_value", "hit")] == 100 * fields
    assert second[("field_value", "miss")] == 0


def test_an_error_reply_fails_the_read_and_leaves_no_reply_behind(
    redis_workspace: Workspace,
) -> None:
    """A key of the wrong type (an error reply mid-batch) fails that read only.

    The replies after the error are left unread: the read closes that
    connection rather than hand it back to the pool, and the next reads are
    answered with their own replies.
    """
    import redis

    features = _redis_features(redis_workspace)
    direct = features._direct
    assert isinstance(direct, RedisDirectRead) and direct._client is not None
    ids = load_telco()["customer_id"].tolist()
    first, others = ids[:3], ids[3:6]
    expected = features.get([*first, *others])
    client = redis.Redis.from_url(
        "redis://" + redis_workspace.env["PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING"]
    )
    wrong = direct._key("0000-WRONGTYPE")
    client.set(wrong, b"not a hash")

    def connected() -> int:
        return int(client.info("clients")["connected_clients"])

    try:
        before = connected()
        with pytest.raises(FeatureStoreUnavailable):
            features.get([*first, "0000-WRONGTYPE", *others])
        # The read closed the connection it left replies on (Redis sees it go).
        deadline = time.monotonic() + 5
        while connected() >= before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert connected() == before - 1
        assert features.get([*first, *others]) == expected
        assert features.get(others) == expected[3:]
    finally:
        client.delete(wrong)
        client.close()


def test_a_cluster_or_glide_client_reads_through_feast(
    redis_workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feast.infra.online_stores.redis import RedisClient

    features = _redis_features(redis_workspace)
    direct = features._direct
    assert isinstance(direct, RedisDirectRead)
    ids = load_telco()["customer_id"].tolist()[:50]
    expected = features.get(ids)
    calls = []
    store = direct._online_store
    feasts = store._read_hash_fields

    def through_feast(config: object, commands: list[object]) -> object:
        calls.append(len(commands))
        return feasts(config, commands)

    monkeypatch.setattr(store, "_read_hash_fields", through_feast)
    config = direct._config.online_store
    monkeypatch.setattr(config, "client", RedisClient.glide)
    assert direct._packable_client() is None
    monkeypatch.setattr(config, "client", RedisClient.redis)
    client = store._get_client(config)
    monkeypatch.setattr(store, "_client", SimpleNamespace(cluster=True))
    assert direct._packable_client() is None
    monkeypatch.setattr(store, "_client", client)
    # Read as with either: through Feast's `_read_hash_fields`.
    monkeypatch.setattr(direct, "_hmget", direct._feast_hmget)
    direct._known.clear()
    assert features.get(ids) == expected
    assert calls == [50]


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
