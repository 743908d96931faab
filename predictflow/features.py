"""Online features from the Feast online store (SQLite embedded, Redis in production).

`import feast` takes seconds, so it happens only when a store is opened.

Reads go through the online store's `online_read` (the interface every Feast
online store implements) for the feature view behind the feature service,
rather than `FeatureStore.get_online_features`: same rows, same values, half
the CPU (that method builds a protobuf response, then a dict of lists, for
every call). It is used only when the feature service's views never expire
(ttl 0), so Feast's max-age check has nothing to do; otherwise reads fall
back to `get_online_features`. On Redis, the same HMGETs are run through the
store's own helpers and the values decoded in one pass (`_RedisDirectRead`).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from predictflow.errors import FeatureStoreUnavailable
from predictflow.schema import FEATURES
from predictflow.settings import FeastSettings

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

ENTITY_KEY = "customer_id"
SOURCE_PARQUET = Path("data") / "customers.parquet"


def yaml_for(settings: FeastSettings) -> Path:
    """The `feature_store*.yaml` of the configured online store."""
    name = {
        "sqlite": "feature_store.yaml",
        "redis": "feature_store.redis.yaml",
    }[settings.online_store]
    return (settings.repo_path / name).resolve()


def redis_connection(settings: FeastSettings) -> str:
    """The connection string with the client options it does not set itself."""
    given = settings.redis_connection_string.get_secret_value()
    present = {part.split("=", 1)[0] for part in given.split(",") if "=" in part}
    extra = [
        option
        for option in settings.redis_client_options.split(",")
        if "=" in option and option.split("=", 1)[0] not in present
    ]
    return ",".join([given, *extra])


def open_store(settings: FeastSettings) -> Any:
    """A Feast `FeatureStore` on the configured repository and online store."""
    import os

    from feast import FeatureStore

    if settings.online_store == "redis":
        # feature_store.redis.yaml reads it through Feast's ${VAR} expansion.
        os.environ["PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING"] = redis_connection(
            settings
        )
    return FeatureStore(
        repo_path=str(settings.repo_path.resolve()), fs_yaml_file=yaml_for(settings)
    )


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.Error, OSError]
    try:
        import redis

        errors.append(redis.RedisError)
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    return tuple(errors)


#: Protobuf `Value` fields read as they are; any other kind goes through Feast.
_SCALAR_KINDS = frozenset(
    {"string_val", "bool_val", "int32_val", "int64_val", "float_val", "double_val"}
)


#: Most distinct field values `_RedisDirectRead` keeps decoded (~100 bytes each).
_KNOWN_VALUES = 65_536


class _DirectRead:
    """`online_read` of each feature view of a service, rows as plain dicts."""

    def __init__(self, store: Any, service: Any) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        from feast.type_map import feast_value_type_to_python_type

        self._entity_key = EntityKey
        self._value = Value
        self._to_python = feast_value_type_to_python_type
        self._config = store.config
        self._online_store = store.provider.online_store
        self._views = [
            (
                store.get_feature_view(projection.name),
                [f.name for f in projection.features],
            )
            for projection in service.feature_view_projections
        ]

    @classmethod
    def applies(cls, store: Any, service: Any) -> bool:
        """True when no view of the service expires rows (ttl 0 or unset)."""
        for projection in service.feature_view_projections:
            ttl = store.get_feature_view(projection.name).ttl
            if ttl and ttl.total_seconds() > 0:
                return False
        return True

    def get(self, customer_ids: Sequence[str]) -> list[dict[str, object] | None]:
        keys = [
            self._entity_key(
                join_keys=[ENTITY_KEY], entity_values=[self._value(string_val=cid)]
            )
            for cid in customer_ids
        ]
        rows: list[dict[str, object]] = [{} for _ in customer_ids]
        for view, names in self._views:
            # A copy: the Redis store appends its timestamp field to the list.
            read = self._online_store.online_read(self._config, view, keys, list(names))
            for row, (_, values) in zip(rows, read, strict=True):
                for name in names:
                    row[name] = self._python(values.get(name) if values else None)
        # An unknown customer: SQLite returns no row, Redis empty values.
        return [None if all(v is None for v in r.values()) else r for r in rows]

    def _python(self, value: Any) -> object:
        if value is None:
            return None
        kind = value.WhichOneof("val")
        if kind is None:
            return None
        if kind in _SCALAR_KINDS:
            return getattr(value, kind)
        return self._to_python(value)


class _RedisDirectRead(_DirectRead):
    """Redis: Feast's HMGET per customer, each value decoded once, straight to Python.

    Feast's `online_read` of the Redis store turns every reply into a dict of
    `ValueProto`s plus a parsed timestamp per customer, which `_DirectRead`
    then turns into Python values: two passes and a few dozen objects per
    customer, the largest CPU cost of a Kafka poll. This keeps Feast's own key
    layout (its helpers make the keys and field names; its `_read_hash_fields`
    runs the pipeline on the client it is configured with) and decodes each
    field's bytes in one pass. The timestamp field is not read: these views
    never expire (`applies`). Pinned to Feast's layout by a test comparing it
    with `get_online_features` on every customer.
    """

    def __init__(self, store: Any, service: Any) -> None:
        from feast.infra.online_stores.redis import _versioned_fv_name

        super().__init__(store, service)
        #: Decoded scalar of each field value seen (bytes -> value), bounded.
        self._known: dict[bytes, object] = {}
        #: Feast's Redis key of a customer id (remembered: ids recur).
        self._key = functools.lru_cache(maxsize=_KNOWN_VALUES)(self._redis_key)
        self._fields = []
        for view, names in self._views:
            _, fields = self._online_store._generate_hset_keys_for_features(
                view,
                list(names),
                fv_name_override=_versioned_fv_name(view, self._config),
            )
            # Feast appends the view's timestamp field last.
            self._fields.append((names, fields[:-1]))

    @classmethod
    def applies(cls, store: Any, service: Any) -> bool:
        """`_DirectRead.applies` on Feast's Redis online store."""
        from feast.infra.online_stores.redis import RedisOnlineStore

        return isinstance(
            store.provider.online_store, RedisOnlineStore
        ) and super().applies(store, service)

    def get(self, customer_ids: Sequence[str]) -> list[dict[str, object] | None]:
        store = self._online_store
        keys = [self._key(cid) for cid in customer_ids]
        rows: list[dict[str, object]] = [{} for _ in customer_ids]
        known = self._known
        for names, fields in self._fields:
            replies = store._read_hash_fields(self._config, [(k, fields) for k in keys])
            for row, values in zip(rows, replies, strict=True):
                for name, raw in zip(names, values, strict=True):
                    value = known.get(raw, known) if raw else None
                    row[name] = self._decode(raw) if value is known else value
        # An unknown customer: no hash, every field None.
        return [None if all(v is None for v in r.values()) else r for r in rows]

    def _redis_key(self, customer_id: str) -> bytes:
        entity = self._entity_key(
            join_keys=[ENTITY_KEY], entity_values=[self._value(string_val=customer_id)]
        )
        key: bytes = self._online_store._generate_redis_keys_for_entities(
            self._config, [entity]
        )[0]
        return key

    def _decode(self, raw: bytes) -> object:
        decoded = self._python(self._value.FromString(raw))
        # Scalars are immutable and most fields take few distinct values
        # (contract type, payment method, tenure): the same bytes decode once.
        if isinstance(decoded, str | int | float):
            if len(self._known) >= _KNOWN_VALUES:
                self._known.clear()
            self._known[raw] = decoded
        return decoded


class _Reader:
    """One opened store: the Feast objects a read goes through."""

    def __init__(self, store: Any, feature_service: str) -> None:
        self.store = store
        self.service = store.get_feature_service(feature_service)
        self.direct: _DirectRead | None = None
        for kind in (_RedisDirectRead, _DirectRead):
            if kind.applies(store, self.service):
                self.direct = kind(store, self.service)
                break

    def get(self, customer_ids: Sequence[str]) -> list[Mapping[str, object] | None]:
        if self.direct is not None:
            # Rows hold the service's features: the model's (a test pins it).
            return list(self.direct.get(customer_ids))
        columns = self.store.get_online_features(
            features=self.service,
            entity_rows=[{ENTITY_KEY: cid} for cid in customer_ids],
        ).to_dict()
        rows: list[Mapping[str, object] | None] = []
        for i in range(len(customer_ids)):
            row = {name: columns[name][i] for name in FEATURES}
            rows.append(None if all(v is None for v in row.values()) else row)
        return rows


#: Seconds between two looks at whether the SQLite store file was replaced.
_FILE_CHECK_SECONDS = 1.0
#: Seconds between two log lines of one ongoing store outage.
_OUTAGE_LOG_SECONDS = 10.0


class OnlineFeatures:
    """Reads customers' stored features through a Feast feature service.

    Safe to call from several threads (the scoring thread, a readiness probe).
    A SQLite store whose file is replaced (a new file moved over it) is
    reopened within about a second: an open connection would go on reading
    the old file. Errors returned to callers never carry the store's address
    or path; the log does, once per outage and then every few seconds.
    """

    def __init__(
        self, store: Any, feature_service: str, settings: FeastSettings | None = None
    ) -> None:
        self._feature_service = feature_service
        self._settings = settings
        self._reader = _Reader(store, feature_service)
        self._errors = _unavailable_errors()
        self._file = _sqlite_file(store)
        self._file_id = _file_id(self._file)
        self._file_checked = time.monotonic()
        self._reopen_lock = threading.Lock()
        self._failing_since: float | None = None
        self._failures = 0
        self._logged = 0.0

    @property
    def store(self) -> Any:
        """The Feast `FeatureStore` reads go through."""
        return self._reader.store

    @property
    def service(self) -> Any:
        """The Feast `FeatureService` whose features are read."""
        return self._reader.service

    @property
    def _direct(self) -> _DirectRead | None:
        # The read in use; tests pin it against `get_online_features`.
        return self._reader.direct

    @_direct.setter
    def _direct(self, value: _DirectRead | None) -> None:
        self._reader.direct = value

    @classmethod
    def open(cls, settings: FeastSettings) -> OnlineFeatures:
        """Open the configured store (connections are made on first read)."""
        return cls(open_store(settings), settings.feature_service, settings)

    def check(self) -> None:
        """Read one key; raises `FeatureStoreUnavailable` if the store cannot answer."""
        self._file_checked = 0.0  # a probe always looks at the file
        self.get(["__readiness_probe__"])

    def get(self, customer_ids: Sequence[str]) -> list[Mapping[str, object] | None]:
        """Stored features of each customer, or None for an unknown one."""
        try:
            if self._file is not None:
                self._reopen_if_replaced()
            rows = self._reader.get(customer_ids)
        except self._errors as exc:
            self._failed(exc)
            raise FeatureStoreUnavailable(
                f"online feature store unavailable ({type(exc).__name__}); "
                "retry shortly"
            ) from exc
        if self._failing_since is not None:
            log.warning(
                "event=feature_store_recovered failed_reads=%d seconds=%.1f",
                self._failures,
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
            self._failures = 0
        return rows

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._logged < _OUTAGE_LOG_SECONDS:
            return
        self._logged = now
        log.warning(
            "event=feature_store_unavailable failed_reads=%d error=%s detail=%r",
            self._failures,
            type(exc).__name__,
            str(exc)[:300],
        )

    def _reopen_if_replaced(self) -> None:
        now = time.monotonic()
        if now - self._file_checked < _FILE_CHECK_SECONDS or self._settings is None:
            return
        with self._reopen_lock:
            self._file_checked = now
            current = _file_id(self._file)
            if current == self._file_id:
                return
            log.warning(
                "event=online_store_file_replaced path=%s action=reopen", self._file
            )
            try:
                reader = _Reader(open_store(self._settings), self._feature_service)
            finally:
                # Not retried on every read if the new file is no store either:
                # the next look (a second later, or a probe) tries again.
                self._file_id = current if current is not None else self._file_id
            old, self._reader = self._reader, reader
            _close(old.store)


def _sqlite_file(store: Any) -> Path | None:
    """The SQLite online store's file, or None for any other store."""
    config = store.config
    if getattr(config.online_store, "type", None) != "sqlite":
        return None
    path = Path(config.online_store.path)
    if not path.is_absolute() and config.repo_path:
        path = Path(config.repo_path) / path
    return path


def _file_id(path: Path | None) -> tuple[int, int] | None:
    """Which file is at `path` now (device, inode), or None if none."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def _close(store: Any) -> None:
    """Close the SQLite connection of a store no longer read (best effort)."""
    conn = getattr(store.provider.online_store, "_conn", None)
    if isinstance(conn, sqlite3.Connection):
        try:
            conn.close()
        except sqlite3.Error:  # pragma: no cover - closing a broken handle
            pass


def load_definitions(repo_path: Path) -> list[Any]:
    """The Feast objects defined in the repository's `feature_definitions.py`."""
    from feast import Entity, FeatureService, FeatureView, FileSource

    path = repo_path / "feature_definitions.py"
    spec = importlib.util.spec_from_file_location(
        "predictflow_feature_definitions", path
    )
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kinds = (Entity, FileSource, FeatureView, FeatureService)
    return [v for v in vars(module).values() if isinstance(v, kinds)]


def write_source(customers: pd.DataFrame, repo_path: Path) -> Path:
    """Write the offline source parquet: the features of each customer, stamped now."""
    now = datetime.now(UTC).replace(microsecond=0)
    frame = customers[[ENTITY_KEY, *FEATURES]].copy()
    frame["event_timestamp"] = now
    frame["created"] = now
    path = repo_path / SOURCE_PARQUET
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def apply_and_materialize(settings: FeastSettings) -> int:
    """`feast apply` the definitions, then load every source row into the online store.

    Returns the number of customers in the source. Safe to repeat: apply is a
    no-op when nothing changed, and materializing writes the same rows again.
    """
    import pandas as pd

    store = open_store(settings)
    store.apply(load_definitions(settings.repo_path))
    source = pd.read_parquet(
        settings.repo_path / SOURCE_PARQUET, columns=["event_timestamp"]
    )
    start = source["event_timestamp"].min().to_pydatetime() - timedelta(seconds=1)
    store.materialize(start_date=start, end_date=datetime.now(UTC))
    return len(source)
