"""The Prometheus metrics of both front doors, defined once.

Created on first use, not at import: inside `bentoml serve`, prometheus_client
must see `PROMETHEUS_MULTIPROC_DIR` (set by BentoML for its workers) before a
metric exists, so that every worker's samples reach the one `/metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
_SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


@dataclass(frozen=True)
class Metrics:
    """Every PredictFlow metric."""

    predictions: Counter
    feature_fetch_seconds: Histogram
    batch_size: Histogram
    gc_pause_seconds: Histogram
    scores: Histogram
    model_info: Gauge
    model_reloads: Counter
    requests_by_token: Counter
    kafka_consumed: Counter
    kafka_replied: Counter
    kafka_dead_lettered: Counter
    kafka_errors: Counter
    kafka_batch_size: Histogram
    kafka_processing_seconds: Histogram
    kafka_lag: Gauge
    memo_lookups: Counter


class CacheCounts:
    """Counts a `functools` cache's hits and misses on `predictflow_memo_lookups`.

    `update` adds what happened since its last call (call it once per batch,
    not per lookup: a counter increment takes a lock in multiprocess mode).
    """

    def __init__(self, memo: str, cached: Any) -> None:
        lookups = get().memo_lookups
        self._hits = lookups.labels(memo, "hit")
        self._misses = lookups.labels(memo, "miss")
        self._cached = cached
        self._seen = (0, 0)

    def update(self) -> None:
        info = self._cached.cache_info()
        hits, misses = info.hits - self._seen[0], info.misses - self._seen[1]
        self._seen = (info.hits, info.misses)
        count(self._hits, self._misses, hits, misses)


def count(hit: Any, miss: Any, hits: int, misses: int) -> None:
    """Add `hits` and `misses` to a memo's two counters (nothing for zero)."""
    if hits > 0:
        hit.inc(hits)
    if misses > 0:
        miss.inc(misses)


@lru_cache(maxsize=1)
def get() -> Metrics:
    """The metrics, created once per process."""
    return Metrics(
        predictions=Counter(
            "predictflow_predictions",
            "Scoring outcomes per request, by front door (rest, kafka).",
            ["source", "outcome"],
        ),
        feature_fetch_seconds=Histogram(
            "predictflow_feature_fetch_seconds",
            "Seconds per batched online feature read.",
            buckets=_LATENCY_BUCKETS,
        ),
        batch_size=Histogram(
            "predictflow_batch_size",
            "Requests per micro-batched scoring call, by front door.",
            ["source"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        ),
        gc_pause_seconds=Histogram(
            "predictflow_gc_pause_seconds",
            "Seconds the garbage collector stopped the process, by generation.",
            ["generation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        ),
        scores=Histogram(
            "predictflow_churn_probability",
            "Distribution of the churn probabilities served.",
            buckets=_SCORE_BUCKETS,
        ),
        model_info=Gauge(
            "predictflow_model_info",
            "1 for the model version each process serves.",
            ["model_version"],
            multiprocess_mode="max",
        ),
        model_reloads=Counter(
            "predictflow_model_reload",
            "Attempts to serve a new version of the followed alias, by outcome "
            "(swapped, refused, failed).",
            ["outcome"],
        ),
        requests_by_token=Counter(
            "predictflow_requests_by_token",
            "REST requests admitted, by the name of their bearer token.",
            ["token"],
        ),
        kafka_consumed=Counter(
            "predictflow_kafka_consumed", "Request records consumed."
        ),
        kafka_replied=Counter(
            "predictflow_kafka_replied",
            "Replies acknowledged by the broker, by kind (score, error).",
            ["kind"],
        ),
        kafka_dead_lettered=Counter(
            "predictflow_kafka_dead_lettered",
            "Poison records sent to the dead-letter topic, by error type.",
            ["error_type"],
        ),
        kafka_errors=Counter(
            "predictflow_kafka_errors",
            "Failures the runner recovered from, by stage.",
            ["stage"],
        ),
        kafka_batch_size=Histogram(
            "predictflow_kafka_batch_size",
            "Records per poll.",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
        ),
        kafka_processing_seconds=Histogram(
            "predictflow_kafka_processing_seconds",
            "Seconds from a poll to its replies acknowledged and offsets committed.",
            buckets=_LATENCY_BUCKETS,
        ),
        kafka_lag=Gauge(
            "predictflow_kafka_consumer_lag",
            "Records behind the high watermark, per owned partition.",
            ["topic", "partition"],
            multiprocess_mode="livemax",
        ),
        memo_lookups=Counter(
            "predictflow_memo_lookups",
            "Lookups in the bounded in-process memos (field_value, "
            "reply_partition), by result (hit, miss).",
            ["memo", "result"],
        ),
    )
