"""`predictflow bootstrap --synthetic N`: N synthetic customers beside the Telco ones.

For load at scale (the benchmarks read 10^6 customers at random). The rows
come from `data.synthetic_customers` (the Telco schema, seeded), with ids that
start with `SYN-`: a Telco id is four digits, a dash and five letters, so the
two sets are disjoint by construction.

Where they go:
- the online store, through Feast's own write path
  (`FeatureStore.write_to_online_store`, chunk by chunk): the rows are in
  Feast's format, and serving reads them as it reads every other row.
  `materialize` would read the whole source through Feast's offline engine
  at every bootstrap, for minutes at this size;
- `feature_repo/data/synthetic_customers.parquet`: their offline copy, same
  columns as the Telco source. It is not a Feast source of its own (a
  `FileSource` would make every `materialize` walk it);
- `<data_dir>/synthetic_ids.txt`: their ids, one per line, for load generators.

Safe to repeat: the rows of a given N are always the same (seeded per chunk),
a write is an upsert, and a rerun whose ids file and store already hold them
skips the writing.
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from predictflow.data import synthetic_customers
from predictflow.encoding import FEATURES
from predictflow.feast_reads import ENTITY_KEY, Reader
from predictflow.features import open_store
from predictflow.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

ID_PREFIX = "SYN-"
FEATURE_VIEW = "customer_stats_fv"
SOURCE_PARQUET = Path("data") / "synthetic_customers.parquet"
#: Rows generated and written at once (bounded memory at any N).
CHUNK = 20_000
#: Seed of chunk k is SEED + k: the rows of N do not depend on who asks.
SEED = 20_261_201


@dataclass(frozen=True)
class SyntheticResult:
    """What `load` left in place."""

    customers: int
    written: bool
    seconds: float
    ids_file: Path


def ids_file(settings: Settings) -> Path:
    """Where the synthetic ids are listed, one per line."""
    return settings.data_dir / "synthetic_ids.txt"


def chunk(start: int, n: int, size: int = CHUNK) -> pd.DataFrame:
    """Up to `size` synthetic customers from `start` on, the same at every call."""
    frame = synthetic_customers(
        min(size, n - start), seed=SEED + start // size, offset=start
    )
    frame[ENTITY_KEY] = ID_PREFIX + frame[ENTITY_KEY]
    return frame[[ENTITY_KEY, *FEATURES]]


#: The online store of a writing process (`_open_worker_store`).
_worker_store: Any = None


def _open_worker_store(settings: Settings) -> None:
    global _worker_store
    _worker_store = open_store(settings.feast)


def _write_chunk(start: int, n: int, size: int, now: datetime) -> pd.DataFrame:
    """In a writing process: one chunk into the online store; returns its rows."""
    rows = chunk(start, n, size).copy()
    rows["event_timestamp"] = now
    rows["created"] = now
    _worker_store.write_to_online_store(FEATURE_VIEW, df=rows)
    return rows


def load(
    settings: Settings,
    n: int,
    *,
    progress: bool = True,
    workers: int | None = None,
    chunk_size: int = CHUNK,
) -> SyntheticResult:
    """Write N synthetic customers to the online store, the parquet and the ids file.

    Needs a bootstrapped repository (`feast apply` done). Skips the writing
    when the ids file lists exactly these N ids and the store holds the last.
    On Redis, chunks are converted and written by `workers` processes
    (default: one per core): Feast's conversion to protobuf values is half of
    the time, in Python. SQLite takes one writer.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    if n < 1:
        raise ValueError(f"--synthetic needs at least 1 customer, not {n}")
    started = time.monotonic()
    listed = ids_file(settings)
    store = open_store(settings.feast)
    if _already_loaded(store, settings, listed, n):
        log.info("step=synthetic status=skipped reason=already_loaded customers=%d", n)
        return SyntheticResult(n, False, time.monotonic() - started, listed)
    parquet = settings.feast.repo_path / SOURCE_PARQUET
    parquet.parent.mkdir(parents=True, exist_ok=True)
    listed.parent.mkdir(parents=True, exist_ok=True)
    tmp_parquet, tmp_ids = parquet.with_suffix(".tmp"), listed.with_suffix(".tmp")
    now = datetime.now(UTC).replace(microsecond=0)
    processes = max(1, min(workers or os.cpu_count() or 1, 8))
    if settings.feast.online_store == "sqlite":
        # One writer: SQLite serializes writes, and a second process waiting
        # on a chunk's transaction fails with "database is locked".
        processes = 1
    writer: Any = None
    with (
        tmp_ids.open("w") as ids,
        tqdm(
            total=n,
            unit="customers",
            unit_scale=True,
            disable=not progress,
            desc=f"synthetic -> {settings.feast.online_store}",
        ) as bar,
        ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_open_worker_store,
            initargs=(settings,),
        ) as pool,
    ):
        try:
            # A few chunks in flight at a time (bounded memory), taken in
            # order, so the parquet and the ids file list them as generated.
            starts = iter(range(0, n, chunk_size))
            pending: collections.deque[Future[pd.DataFrame]] = collections.deque(
                pool.submit(_write_chunk, start, n, chunk_size, now)
                for start in itertools.islice(starts, 2 * processes)
            )
            while pending:
                rows = pending.popleft().result()
                following = next(starts, None)
                if following is not None:
                    pending.append(
                        pool.submit(_write_chunk, following, n, chunk_size, now)
                    )
                table = pa.Table.from_pandas(rows, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp_parquet, table.schema)
                writer.write_table(table)
                ids.write("\n".join(rows[ENTITY_KEY]) + "\n")
                bar.update(len(rows))
        finally:
            if writer is not None:
                writer.close()
    tmp_parquet.replace(parquet)
    # The ids file last: its presence says the store holds them all.
    tmp_ids.replace(listed)
    seconds = time.monotonic() - started
    log.info(
        "event=synthetic_loaded customers=%d online_store=%s seconds=%.1f ids=%s",
        n,
        settings.feast.online_store,
        seconds,
        listed,
    )
    return SyntheticResult(n, True, seconds, listed)


def _already_loaded(store: Any, settings: Settings, listed: Path, n: int) -> bool:
    if not listed.exists():
        return False
    with listed.open() as f:
        count, last = 0, ""
        for line in f:
            count, last = count + 1, line.strip()
    if count != n or not last:
        return False
    # The same N gives the same last id; the store must hold it.
    expected = _last_id(n)
    if last != expected:
        return False
    reader = Reader(store, settings.feast.feature_service)
    return reader.get([expected])[0] is not None


def _last_id(n: int) -> str:
    # An id depends on its offset only, not on its chunk's seed.
    return f"{ID_PREFIX}{synthetic_customers(1, offset=n - 1)[ENTITY_KEY].iloc[0]}"
