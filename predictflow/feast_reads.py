"""Fast online reads through Feast's own store objects, rows as plain dicts.

Reads go through the online store's `online_read` (the interface every Feast
online store implements) for the feature view behind the feature service,
rather than `FeatureStore.get_online_features`: same rows, same values, half
the CPU (that method builds a protobuf response, then a dict of lists, for
every call). It is used only when the feature service's views never expire
(ttl 0), so Feast's max-age check has nothing to do; otherwise reads fall
back to `get_online_features`.

On Redis, the same HMGETs are run through the store's own helpers and the
values decoded in one pass (`RedisDirectRead`). Those helpers are private to
Feast, so that read is used only on the Feast version it was checked against
(`FAST_READ_FEAST_VERSION`, pinned like the dependency); on any other the
public `online_read` serves (`DirectRead`). Both are pinned to Feast's own
read by tests comparing them with `get_online_features` on every customer.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from predictflow import metrics
from predictflow.encoding import FEATURES

log = logging.getLogger(__name__)

ENTITY_KEY = "customer_id"
#: The Feast release whose private Redis helpers `RedisDirectRead` calls (the
#: pin in pyproject.toml; a test keeps them equal).
FAST_READ_FEAST_VERSION = "0.67.0"

#: Protobuf `Value` fields read as they are; any other kind goes through Feast.
_SCALAR_KINDS = frozenset(
    {"string_val", "bool_val", "int32_val", "int64_val", "float_val", "double_val"}
)


#: Most distinct field values `RedisDirectRead` keeps decoded (~100 bytes each).
_KNOWN_VALUES = 65_536


class DirectRead:
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


class RedisDirectRead(DirectRead):
    """Redis: Feast's HMGET per customer, each value decoded once, straight to Python.

    Feast's `online_read` of the Redis store turns every reply into a dict of
    `ValueProto`s plus a parsed timestamp per customer, which `DirectRead`
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
        self._key_counts = metrics.CacheCounts("redis_key", self._key)
        lookups = metrics.get().memo_lookups
        self._value_counts = (
            lookups.labels("field_value", "hit"),
            lookups.labels("field_value", "miss"),
        )
        self._decoded = 0
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
        """`DirectRead.applies` on Feast's Redis store, on the Feast release checked."""
        from feast.infra.online_stores.redis import RedisOnlineStore

        if not isinstance(store.provider.online_store, RedisOnlineStore):
            return False
        installed = importlib.metadata.version("feast")
        if installed != FAST_READ_FEAST_VERSION:
            log.warning(
                "event=redis_fast_read_off feast=%s checked=%s "
                "effect=reads_through_online_read",
                installed,
                FAST_READ_FEAST_VERSION,
            )
            return False
        return super().applies(store, service)

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
        found = [None if all(v is None for v in r.values()) else r for r in rows]
        self._count(found)
        return found

    def _count(self, found: list[dict[str, object] | None]) -> None:
        # Per batch, not per field: the loop above stays as it was.
        self._key_counts.update()
        fields = sum(len(names) for names, _ in self._fields)
        lookups = fields * sum(row is not None for row in found)
        misses, self._decoded = self._decoded, 0
        metrics.count(*self._value_counts, max(lookups - misses, 0), misses)

    def _redis_key(self, customer_id: str) -> bytes:
        entity = self._entity_key(
            join_keys=[ENTITY_KEY], entity_values=[self._value(string_val=customer_id)]
        )
        key: bytes = self._online_store._generate_redis_keys_for_entities(
            self._config, [entity]
        )[0]
        return key

    def _decode(self, raw: bytes) -> object:
        self._decoded += 1
        decoded = self._python(self._value.FromString(raw))
        # Scalars are immutable and most fields take few distinct values
        # (contract type, payment method, tenure): the same bytes decode once.
        if isinstance(decoded, str | int | float):
            if len(self._known) >= _KNOWN_VALUES:
                self._known.clear()
            self._known[raw] = decoded
        return decoded


class Reader:
    """One opened store: the Feast objects a read goes through."""

    def __init__(self, store: Any, feature_service: str) -> None:
        self.store = store
        self.service = store.get_feature_service(feature_service)
        self.direct: DirectRead | None = None
        for kind in (RedisDirectRead, DirectRead):
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
