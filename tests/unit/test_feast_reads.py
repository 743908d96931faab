"""The fast reads against Feast's own on a real SQLite store, and their guard."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from predictflow import feast_reads
from predictflow.data import synthetic_customers
from predictflow.feast_reads import DirectRead, RedisDirectRead
from predictflow.feature_repo import apply_and_materialize, write_source
from predictflow.features import OnlineFeatures, repo_config
from predictflow.settings import FeastSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sqlite_features(tmp_path_factory: pytest.TempPathFactory) -> OnlineFeatures:
    """A real Feast repository in a temporary directory, 300 customers loaded."""
    repo = tmp_path_factory.mktemp("feature_repo")
    for name in ("feature_definitions.py", "feature_store.yaml"):
        shutil.copy(ROOT / "feature_repo" / name, repo / name)
    customers = synthetic_customers(300, seed=3)
    # Telco's one odd row: TotalCharges blank for a new customer.
    customers.loc[customers.index[0], "total_charges"] = np.nan
    write_source(customers, repo)
    settings = FeastSettings(repo_path=repo, online_store="sqlite")
    assert apply_and_materialize(settings) == 300
    features = OnlineFeatures.open(settings)
    features.ids = customers["customer_id"].tolist()  # type: ignore[attr-defined]
    return features


def test_sqlite_fast_read_equals_feasts_read(sqlite_features: OnlineFeatures) -> None:
    assert type(sqlite_features._direct) is DirectRead
    ids: list[str] = sqlite_features.ids  # type: ignore[attr-defined]
    ids = [*ids, "0000-NOBODY", ids[0]]
    direct = sqlite_features.get(ids)
    reference = OnlineFeatures(sqlite_features.store, sqlite_features.service.name)
    reference._direct = None  # Feast's get_online_features
    expected = reference.get(ids)
    assert direct == expected
    assert direct[-2] is None and sum(r is not None for r in direct) == len(ids) - 1
    for got, want in zip(direct, expected, strict=True):
        if want is not None:
            assert got is not None
            assert {k: type(v) for k, v in got.items()} == {
                k: type(v) for k, v in want.items()
            }


def test_the_redis_fast_read_is_pinned_to_the_feast_it_was_checked_on() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    pinned = re.search(r'"feast\[redis\]==([^"]+)"', pyproject)
    assert pinned, "feast is pinned in pyproject.toml"
    assert pinned[1] == feast_reads.FAST_READ_FEAST_VERSION


def test_another_feast_release_reads_through_the_public_interface(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from feast.infra.online_stores.redis import RedisOnlineStore

    view = SimpleNamespace(ttl=None)
    store = SimpleNamespace(
        provider=SimpleNamespace(online_store=RedisOnlineStore()),
        get_feature_view=lambda name: view,
    )
    service = SimpleNamespace(feature_view_projections=[SimpleNamespace(name="v")])
    assert RedisDirectRead.applies(store, service)
    monkeypatch.setattr(
        feast_reads.importlib.metadata, "version", lambda name: "0.99.0"
    )
    assert not RedisDirectRead.applies(store, service)
    # ... and the public online_read still serves.
    assert DirectRead.applies(store, service)


def test_redis_keys_are_feasts_keys(sqlite_features: OnlineFeatures) -> None:
    from feast.infra.online_stores.redis import RedisOnlineStore
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    redis = RedisOnlineStore()
    config = sqlite_features.store.config

    def feast_key(customer_id: str) -> bytes:
        entity = EntityKey(
            join_keys=["customer_id"], entity_values=[Value(string_val=customer_id)]
        )
        return bytes(redis._generate_redis_keys_for_entities(config, [entity])[0])

    made = feast_reads._key_maker(feast_key)
    assert made is not feast_key
    ids: list[str] = sqlite_features.ids  # type: ignore[attr-defined]
    odd = ["", "7590-VHVEG", "ü", "客户-𝄞", "x" * 300, "a\x00b", "s-" + "9" * 64]
    for customer_id in [*ids, *odd]:
        assert made(customer_id) == feast_key(customer_id), customer_id


def test_an_unknown_key_layout_keeps_feasts_own_function(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def length_last(customer_id: str) -> bytes:
        raw = customer_id.encode()
        return b"prefix" + raw + len(raw).to_bytes(2, "big")

    assert feast_reads._key_maker(length_last) is length_last
    assert "redis_key_layout_unknown" in caplog.text

    def id_twice(customer_id: str) -> bytes:
        raw = customer_id.encode()
        return b"p" + len(raw).to_bytes(4, "little") + raw + b"s" + raw[::-1]

    # The probe's key parses as prefix, length, id, suffix; other ids' do not.
    assert feast_reads._key_maker(id_twice) is id_twice


def test_an_hmget_is_packed_as_resp() -> None:
    head, fields = feast_reads._hmget_parts(["a", b"bc"])
    assert head + b"$3\r\nkey\r\n" + fields == (
        b"*4\r\n$5\r\nHMGET\r\n$3\r\nkey\r\n$1\r\na\r\n$2\r\nbc\r\n"
    )


def test_the_redis_connection_goes_into_feasts_config_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING", raising=False)
    settings = FeastSettings(
        online_store="redis", redis_connection_string="redis:6379,password=s3cret"
    )
    config = repo_config(settings)
    assert config.online_store.connection_string.startswith(
        "redis:6379,password=s3cret,socket_connect_timeout=1"
    )
    assert str(config.repo_path) == str(settings.repo_path.resolve())
    assert "PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING" not in os.environ
