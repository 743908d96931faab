"""What a server's /metrics says a load did: samples before and after, diffed.

The memo hit ratios, the micro-batch sizes and the GC pauses are the
service's own counters (`predictflow/metrics.py`), read around a measured
load; Prometheus' exposition format, parsed sample by sample.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx

Samples = dict[str, float]

_LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(url: str) -> Samples:
    """Every sample of `url`/metrics: `name{labels}` -> value."""
    text = httpx.get(url + "/metrics", timeout=30).text
    return parse(text)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        samples[key] = float(value)
    return samples


def delta(after: Samples, before: Samples) -> Samples:
    """What each sample grew by between two scrapes (new ones count whole)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def _split(key: str) -> tuple[str, dict[str, str]]:
    name, _, labels = key.partition("{")
    return name, dict(_LABEL.findall(labels))


def select(
    samples: Samples, name: str, **labels: str
) -> list[tuple[dict[str, str], float]]:
    """The samples of metric `name` whose labels include `labels`."""
    out = []
    for key, value in samples.items():
        n, got = _split(key)
        if n == name and all(got.get(k) == v for k, v in labels.items()):
            out.append((got, value))
    return out


def memo_hit_ratios(d: Samples) -> dict[str, Any]:
    """Per memo: lookups and the share answered from the memo."""
    out: dict[str, Any] = {}
    for labels, value in select(d, "predictflow_memo_lookups_total"):
        memo = out.setdefault(labels["memo"], {"hit": 0.0, "miss": 0.0})
        memo[labels["result"]] += value
    for memo in out.values():
        lookups = memo["hit"] + memo["miss"]
        memo["lookups"] = int(lookups)
        memo["hit_ratio"] = round(memo["hit"] / lookups, 4) if lookups else None
        del memo["hit"], memo["miss"]
    return out


def mean_batch_size(d: Samples, source: str) -> float | None:
    """Mean requests per micro-batched scoring call of `source` (rest, kafka)."""
    total = sum(v for _, v in select(d, "predictflow_batch_size_sum", source=source))
    calls = sum(v for _, v in select(d, "predictflow_batch_size_count", source=source))
    return round(total / calls, 2) if calls else None


def gc_pauses(d: Samples) -> dict[str, Any]:
    """GC pauses of every generation: count, share within each bucket, P99 bound.

    The P99 is the upper bound of the first bucket holding 99 % of the pauses
    (a histogram gives no finer answer).
    """
    by_le: dict[float, float] = {}
    for labels, value in select(d, "predictflow_gc_pause_seconds_bucket"):
        le = float(labels["le"])
        by_le[le] = by_le.get(le, 0.0) + value
    total = by_le.get(float("inf"), 0.0)
    if not total:
        return {"pauses": 0, "p99_le_ms": None, "within_ms": {}}
    p99 = next(le for le in sorted(by_le) if by_le[le] >= 0.99 * total)
    return {
        "pauses": int(total),
        "p99_le_ms": None if p99 == float("inf") else round(p99 * 1000, 3),
        "within_ms": {
            f"{le * 1000:g}": round(by_le[le] / total, 4)
            for le in sorted(by_le)
            if le != float("inf")
        },
    }


def summary(d: Mapping[str, float], source: str = "rest") -> dict[str, Any]:
    samples = dict(d)
    return {
        "memo": memo_hit_ratios(samples),
        "mean_batch_size": mean_batch_size(samples, source),
        "gc": gc_pauses(samples),
    }
