"""Fast online reads through Feast's own store objects, rows as plain dicts.

Reads go through the online store's `online_read` (the interface every Feast
online store implements) for the feature view behind the feature service,
rather than `FeatureStore.get_online_features`: same rows, same values, half
the CPU (that method builds a protobuf response, then a dict of lists, for
every call). It is used only when the feature service's views never expire
(ttl 0), so Feast's max-age check has nothing to do; otherwise reads fall
back to `get_online_features`.

On Redis, `RedisDirectRead` sends the HMGETs Feast would send, packed
ready on a connection of the store's own redis-py client, and decodes each
value once. It keeps Feast's layout (the store's private helpers name the
fields; each key is checked against Feast's own), so it is used only on the
Feast version it was checked against (`FAST_READ_FEAST_VERSION`, pinned like
the dependency); on any other the public `online_read` serves
(`DirectRead`). Both are pinned to Feast's own read by tests comparing them
with `get_online_features` on every customer.
"""

from __future__ import annotations

import importlib.metadata
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
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
    """Redis: Feast's HMGET per customer, sent pre-packed, decoded in one pass.

    Feast's `online_read` of the Redis store turns every reply into a dict of
    `ValueProto`s plus a parsed timestamp per customer, which `DirectRead`
    then turns into Python values: two passes and a few dozen objects per
    customer, the largest CPU cost of a Kafka poll. This keeps Feast's own
    layout (its helpers make the field names, and the key of every customer
    id is Feast's, see `_key_maker`) and decodes each field's bytes in one
    pass. The timestamp field is not read: these views never expire
    (`applies`). Pinned to Feast's layout by a test comparing it with
    `get_online_features` on every customer.

    The HMGETs of a read go to Redis as one write of ready-made commands on a
    connection of the store's own redis-py client (`_packed_hmget`), as
    redis-py's pipeline would send them: its packing was half of a read's
    CPU (the commit that made the change has the measurement). A cluster
    client, or Feast's `client: glide`, reads through Feast's
    `_read_hash_fields` instead (`_feast_hmget`).
    """

    def __init__(self, store: Any, service: Any) -> None:
        from feast.infra.online_stores.redis import _versioned_fv_name

        super().__init__(store, service)
        self._known = _KnownValues(self._decode)
        self._key = _key_maker(self._redis_key)
        lookups = metrics.get().memo_lookups
        self._value_counts = (
            lookups.labels("field_value", "hit"),
            lookups.labels("field_value", "miss"),
        )
        self._fields = []
        for view, names in self._views:
            _, fields = self._online_store._generate_hset_keys_for_features(
                view,
                list(names),
                fv_name_override=_versioned_fv_name(view, self._config),
            )
            # Feast appends the view's timestamp field last.
            fields = fields[:-1]
            self._fields.append((names, fields, _hmget_parts(fields)))
        self._client = self._packable_client()
        #: How the HMGETs of one view are read: packed, or through Feast.
        self._hmget = self._feast_hmget if self._client is None else self._packed_hmget

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
        key = self._key
        keys = [key(cid) for cid in customer_ids]
        rows: list[dict[str, object]] = [{} for _ in customer_ids]
        # A value seen before is a dict lookup; `_KnownValues` decodes the rest.
        value = self._known.__getitem__
        for names, fields, packed in self._fields:
            replies = self._hmget(keys, fields, packed)
            for row, values in zip(rows, replies, strict=True):
                row.update(zip(names, map(value, values), strict=True))
        # An unknown customer: no hash, every field None.
        found = [None if all(v is None for v in r.values()) else r for r in rows]
        self._count(found)
        return found

    def _packable_client(self) -> Any:
        """The store's redis-py client, if its reads may be sent pre-packed."""
        import redis
        from feast.infra.online_stores.redis import RedisClient

        config = self._config.online_store
        if getattr(config, "client", RedisClient.redis) != RedisClient.redis:
            return None
        client = self._online_store._get_client(config)
        # A cluster client spreads keys over nodes; only a plain one is packed.
        return client if isinstance(client, redis.Redis) else None

    def _feast_hmget(
        self, keys: list[bytes], fields: list[bytes], _packed: tuple[bytes, bytes]
    ) -> list[Any]:
        """One HMGET of `fields` per key, through Feast's `_read_hash_fields`."""
        replies: list[Any] = self._online_store._read_hash_fields(
            self._config, [(k, fields) for k in keys]
        )
        return replies

    def _packed_hmget(
        self, keys: list[bytes], _fields: list[bytes], packed: tuple[bytes, bytes]
    ) -> list[Any]:
        """One HMGET per key, written at once, replies in order (`_hmget_parts`).

        As redis-py's pipeline does: a connection from the client's pool, its
        retry policy on connection errors (then the batch is sent again on a
        new connection), and a connection that failed is closed, not reused.
        """
        head, fields = packed
        command = b"".join(
            [b"%s$%d\r\n%s\r\n%s" % (head, len(k), k, fields) for k in keys]
        )
        pool = self._client.connection_pool
        conn = pool.get_connection()

        def exchange() -> list[Any]:
            conn.send_packed_command([command])
            return [conn.read_response() for _ in keys]

        try:
            replies: list[Any] = conn.retry.call_with_retry(
                exchange, lambda _error: conn.disconnect()
            )
        except BaseException:
            # Replies may be left unread on it (an error reply, a timeout).
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        return replies

    def _count(self, found: list[dict[str, object] | None]) -> None:
        # Per batch, not per field: the loop above stays as it was.
        fields = sum(len(names) for names, _, _ in self._fields)
        lookups = fields * sum(row is not None for row in found)
        misses, self._known.misses = self._known.misses, 0
        metrics.count(*self._value_counts, max(lookups - misses, 0), misses)

    def _redis_key(self, customer_id: str) -> bytes:
        """Feast's Redis key of a customer id, made by Feast."""
        entity = self._entity_key(
            join_keys=[ENTITY_KEY], entity_values=[self._value(string_val=customer_id)]
        )
        key: bytes = self._online_store._generate_redis_keys_for_entities(
            self._config, [entity]
        )[0]
        return key

    def _decode(self, raw: bytes) -> object:
        return self._python(self._value.FromString(raw))


class _KnownValues(dict[bytes | None, object]):
    """The decoded value of each field's bytes seen, at most `_KNOWN_VALUES`.

    Scalars are immutable and most fields take few distinct values (contract
    type, payment method, tenure): the same bytes decode once. A lookup of
    bytes not seen decodes them (`__missing__`); no value (a missing field or
    hash, or an empty `Value`) is None. Full, it starts over.
    """

    def __init__(self, decode: Callable[[bytes], object]) -> None:
        super().__init__()
        self._decode = decode
        #: Values decoded (not found) since the caller last reset it.
        self.misses = 0

    def __missing__(self, raw: bytes | None) -> object:
        if not raw:
            return None
        self.misses += 1
        decoded = self._decode(raw)
        if isinstance(decoded, str | int | float):
            if len(self) >= _KNOWN_VALUES:
                self.clear()
            self[raw] = decoded
        return decoded


def _hmget_parts(fields: Sequence[str | bytes]) -> tuple[bytes, bytes]:
    """An HMGET of `fields` in RESP, less its key: what comes before and after it."""
    encoded = [f.encode() if isinstance(f, str) else bytes(f) for f in fields]
    head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(encoded) + 2)
    return head, b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in encoded)


#: Customer ids `_key_maker` checks its keys against Feast's on (lengths 0 to
#: 36, multi-byte characters).
_KEY_PROBES = ("x", "", "7590-VHVEG", "s-00000001", "é€𝄞", "c" * 36)


def _key_maker(feast_key: Callable[[str], bytes]) -> Callable[[str], bytes]:
    """A function making Feast's Redis key of a customer id, without protobuf.

    Feast's key of one string entity is a fixed prefix, the id's UTF-8 length
    (4 bytes, little-endian), the id, and a fixed suffix (the project): the
    prefix and suffix are taken from Feast's own key of a probe id and the
    result checked against Feast's on `_KEY_PROBES`. 0.3 µs per id instead of
    Feast's 4 µs through protobuf (ids are drawn from 10^6 customers: no memo
    holds them). If Feast's layout ever differs, Feast's own function is used.
    """
    probe = feast_key("x")
    at = probe.rfind(_length(1) + b"x")
    if at < 0:
        log.warning("event=redis_key_layout_unknown effect=keys_made_by_feast")
        return feast_key
    prefix, suffix = probe[:at], probe[at + 5 :]

    def key(customer_id: str) -> bytes:
        raw = customer_id.encode()
        return b"%s%s%s%s" % (prefix, _length(len(raw)), raw, suffix)

    if any(key(p) != feast_key(p) for p in _KEY_PROBES):
        log.warning("event=redis_key_layout_unknown effect=keys_made_by_feast")
        return feast_key
    return key


_length = struct.Struct("<I").pack


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
