"""Online features from the Feast online store (SQLite embedded, Redis in production).

`import feast` takes seconds, so it happens only when a store is opened. How a
read is made (Feast's own objects, fast) is `predictflow.feast_reads`; this
module opens the store, keeps reads safe across threads, outages and a
replaced SQLite file, and maps failures to `FeatureStoreUnavailable`.

A SQLite store's file is handed to the kernel's read-ahead after its first
read (`prefetch`): at 10^6 customers the file is 4 GB, and a read of a customer
whose pages are not cached waits on the disk (the commit that added it has
the measurements).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from predictflow.errors import FeatureStoreUnavailable
from predictflow.feast_reads import DirectRead, Reader
from predictflow.settings import FeastSettings

log = logging.getLogger(__name__)


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


def repo_config(settings: FeastSettings) -> Any:
    """Feast's `RepoConfig` from the store's YAML, with the Redis connection set.

    The YAML names `${PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING}` for the
    feast CLI; here the connection string (with its client options) goes into
    the config object, not into the process environment.
    """
    import yaml
    from feast.repo_config import RepoConfig

    raw = yaml.safe_load(os.path.expandvars(yaml_for(settings).read_text()))
    if settings.online_store == "redis":
        raw["online_store"]["connection_string"] = redis_connection(settings)
    offline = raw.get("offline_store")
    if isinstance(offline, dict) and offline.keys() == {"type"}:
        # Given as a dict, Feast validates the offline store's options at
        # once, importing its class: Dask and pandas' friends for "file",
        # 0.7 s of every serving worker's start, which never reads offline.
        # Its type alone is the same config, built on first use.
        raw["offline_store"] = offline["type"]
    config = RepoConfig(**raw)
    config.repo_path = settings.repo_path.resolve()
    return config


def open_store(settings: FeastSettings) -> Any:
    """A Feast `FeatureStore` on the configured repository and online store."""
    from feast import FeatureStore

    return FeatureStore(
        repo_path=str(settings.repo_path.resolve()), config=repo_config(settings)
    )


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.Error, OSError]
    try:
        import redis

        errors.append(redis.RedisError)
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    return tuple(errors)


#: Seconds between two looks at whether the SQLite store file was replaced.
_FILE_CHECK_SECONDS = 1.0
#: Seconds between two log lines of one ongoing store outage.
_OUTAGE_LOG_SECONDS = 10.0
#: Bytes of the SQLite file asked for per read-ahead call. The kernel reads at
#: most max(read_ahead_kb, max_sectors_kb) of the device per call, 128 KB by
#: default: a larger request would leave the rest unread. Each call returns
#: once its reads are queued, so a full disk queue paces the loop.
_PREFETCH_CHUNK = 128 << 10
#: Chunks between two looks at whether the file was replaced (then the
#: read-ahead of the old one stops: the new one gets its own).
_PREFETCH_CHECK_EVERY = 1024


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
        self._reader = Reader(store, feature_service)
        self._errors = _unavailable_errors()
        self._file = _sqlite_file(store)
        self._file_id = _file_id(self._file)
        #: Read-ahead of the SQLite file, asked for after the first read that
        #: answers: started earlier, it queued that read (a readiness probe)
        #: behind gigabytes of its own, and a cold start took seconds longer.
        self._prefetch_due = (
            self._file is not None and settings is not None and settings.sqlite_prefetch
        )
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
    def _direct(self) -> DirectRead | None:
        # The read in use; tests pin it against `get_online_features`.
        return self._reader.direct

    @_direct.setter
    def _direct(self, value: DirectRead | None) -> None:
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
        if self._prefetch_due and self._file is not None:
            # Two threads may both start one: the second finds pages cached.
            self._prefetch_due = False
            prefetch(self._file)
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
                reader = Reader(open_store(self._settings), self._feature_service)
            finally:
                # Not retried on every read if the new file is no store either:
                # the next look (a second later, or a probe) tries again.
                self._file_id = current if current is not None else self._file_id
            old, self._reader = self._reader, reader
            _close(old.store)
            self._prefetch_due = self._settings.sqlite_prefetch


def prefetch(path: Path) -> threading.Thread | None:
    """Have the kernel read a file into the page cache, from a background thread.

    Best effort, and not waited for (readiness does not depend on it): the
    file's pages are asked for with `POSIX_FADV_WILLNEED`, chunk by chunk;
    the kernel reads them asynchronously and keeps what fits in memory. Each
    serving process asks; pages already cached cost nothing more. The whole
    file is read even when it does not fit (`feast.sqlite_prefetch` turns it
    off). None where the platform has no `posix_fadvise`, or no thread could
    be started (a read must not fail for it).
    """
    if not hasattr(os, "posix_fadvise"):
        return None
    thread = threading.Thread(
        target=_prefetch, args=(path,), name="sqlite-prefetch", daemon=True
    )
    try:
        thread.start()
    except RuntimeError as exc:
        log.warning("event=sqlite_prefetch_failed path=%s error=%r", path, exc)
        return None
    return thread


def _prefetch(path: Path) -> None:
    started = time.monotonic()
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            stat = os.fstat(fd)
            size, opened = stat.st_size, (stat.st_dev, stat.st_ino)
            for i, offset in enumerate(range(0, size, _PREFETCH_CHUNK)):
                if i % _PREFETCH_CHECK_EVERY == 0 and _file_id(path) != opened:
                    log.info("event=sqlite_prefetch_stopped path=%s: replaced", path)
                    return
                os.posix_fadvise(fd, offset, _PREFETCH_CHUNK, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("event=sqlite_prefetch_failed path=%s error=%r", path, exc)
        return
    log.info(
        "event=sqlite_prefetch_queued path=%s bytes=%d seconds=%.1f",
        path,
        size,
        time.monotonic() - started,
    )


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
