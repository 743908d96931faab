"""The canary checks: `judge` on each track's figures, and the same checks as
Argo Rollouts analysis metrics, both from one set of PromQL queries.

Metrics are told apart by a `track` label (`stable` / `canary`), which the
Prometheus scrape config copies from the pod label of the same name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: The AnalysisTemplate argument its queries read their window from.
WINDOW_ARG = "{{args.window}}"

REST_ENDPOINTS = 'endpoint=~"/predict|/predict_batch"'


@dataclass(frozen=True)
class Thresholds:
    """How much worse than stable the canary may be."""

    error_rate_margin: float = 0.01
    p99_ratio: float = 1.5
    p99_floor_seconds: float = 0.05
    kafka_error_margin: float = 0.01
    score_shift: float = 0.1
    min_requests: int = 20


@dataclass(frozen=True)
class TrackStats:
    """One track's figures over the analysis window (None: no data)."""

    requests: float
    error_rate: float | None
    p99_seconds: float | None
    kafka_consumed: float
    kafka_error_rate: float | None
    mean_score: float | None


@dataclass
class Verdict:
    """Whether the canary may go on, and why."""

    healthy: bool
    reasons: list[str] = field(default_factory=list)


def judge(canary: TrackStats, stable: TrackStats, t: Thresholds) -> Verdict:
    """Compare the canary with stable; every failed check is a reason."""
    reasons: list[str] = []
    if canary.requests < t.min_requests:
        reasons.append(
            f"too little traffic to judge: {canary.requests:.0f} canary requests "
            f"(< {t.min_requests})"
        )
        return Verdict(False, reasons)
    c_err, s_err = canary.error_rate or 0.0, stable.error_rate or 0.0
    if c_err > s_err + t.error_rate_margin:
        reasons.append(f"5xx rate {c_err:.2%} vs stable {s_err:.2%}")
    if canary.p99_seconds is not None and stable.p99_seconds is not None:
        limit = max(stable.p99_seconds * t.p99_ratio, t.p99_floor_seconds)
        if canary.p99_seconds > limit:
            reasons.append(
                f"P99 {canary.p99_seconds * 1000:.1f} ms vs stable "
                f"{stable.p99_seconds * 1000:.1f} ms (limit {limit * 1000:.1f} ms)"
            )
    if canary.kafka_consumed > 0:
        ck, sk = canary.kafka_error_rate or 0.0, stable.kafka_error_rate or 0.0
        if ck > sk + t.kafka_error_margin:
            reasons.append(f"Kafka error/DLQ rate {ck:.2%} vs stable {sk:.2%}")
    if canary.mean_score is not None and stable.mean_score is not None:
        shift = abs(canary.mean_score - stable.mean_score)
        if shift > t.score_shift:
            reasons.append(
                f"mean churn probability {canary.mean_score:.3f} vs stable "
                f"{stable.mean_score:.3f} (shift {shift:.3f} > {t.score_shift})"
            )
    return Verdict(not reasons, reasons)


# --- PromQL ------------------------------------------------------------------


@dataclass(frozen=True)
class TrackQueries:
    """The PromQL of one track's figures over a window (e.g. `300s`)."""

    requests: str
    errors: str
    p99: str
    kafka_consumed: str
    kafka_bad: str
    score_sum: str
    score_count: str


def track_queries(track: str, window: str) -> TrackQueries:
    """Every per-track query either path asks Prometheus."""
    rest = f'track="{track}",{REST_ENDPOINTS}'
    k = f'track="{track}"'

    def inc(metric: str, selector: str) -> str:
        return f"sum(increase({metric}{{{selector}}}[{window}]))"

    return TrackQueries(
        requests=inc("bentoml_service_request_total", rest),
        errors=inc(
            "bentoml_service_request_total", f'{rest},http_response_code=~"5.."'
        ),
        p99=(
            "histogram_quantile(0.99, sum by (le) (rate("
            f'bentoml_service_request_duration_seconds_bucket{{track="{track}",'
            f'endpoint="/predict"}}[{window}])))'
        ),
        kafka_consumed=inc("predictflow_kafka_consumed_total", k),
        kafka_bad=(
            f"{inc('predictflow_kafka_dead_lettered_total', k)} "
            f"+ {inc('predictflow_kafka_errors_total', k)}"
        ),
        score_sum=inc("predictflow_churn_probability_sum", k),
        score_count=inc("predictflow_churn_probability_count", k),
    )


def track_stats(scalar: Callable[[str], float | None], q: TrackQueries) -> TrackStats:
    """The figures `judge` compares, from one query function (None: no data)."""
    requests = scalar(q.requests) or 0.0
    errors = scalar(q.errors)
    consumed = scalar(q.kafka_consumed) or 0.0
    kafka_bad = scalar(q.kafka_bad)
    score_sum = scalar(q.score_sum)
    score_count = scalar(q.score_count)
    return TrackStats(
        requests=requests,
        error_rate=(errors or 0.0) / requests if requests else None,
        p99_seconds=scalar(q.p99),
        kafka_consumed=consumed,
        kafka_error_rate=(kafka_bad or 0.0) / consumed if consumed else None,
        mean_score=(score_sum / score_count)
        if score_sum is not None and score_count
        else None,
    )


def finite(value: str) -> float | None:
    """A Prometheus sample value as a float, None when NaN or infinite."""
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class AnalysisMetric:
    """One check as Argo Rollouts runs it: a query and its conditions.

    The query yields one sample or none; `result[0]` is that sample. No sample
    means "not judged here" (the track has no such traffic): the traffic check
    decides then, as `judge` returns early on too little traffic.
    """

    name: str
    query: str
    success: str
    failure: str | None = None


def analysis_metrics(
    t: Thresholds = Thresholds(), window: str = WINDOW_ARG
) -> list[AnalysisMetric]:
    """`judge`'s checks, canary against stable, one PromQL query each."""
    c, s = track_queries("canary", window), track_queries("stable", window)

    def rate(bad: str, total: str) -> str:
        # No bad-event series counts as 0; no traffic leaves no sample.
        return f"(({bad}) or vector(0)) / ({total} > 0)"

    def mean(q: TrackQueries) -> str:
        return f"({q.score_sum} / ({q.score_count} > 0))"

    def unless_empty(condition: str) -> str:
        return f"len(result) == 0 || {condition}"

    return [
        # Too little canary traffic is neither a pass nor a failure: Argo
        # marks the run Inconclusive and pauses the rollout for a person.
        AnalysisMetric(
            "canary-traffic",
            c.requests,
            success=f"len(result) > 0 && result[0] >= {t.min_requests}",
            failure="false",
        ),
        AnalysisMetric(
            "error-rate",
            f"{rate(c.errors, c.requests)} - ({rate(s.errors, s.requests)} "
            "or vector(0))",
            success=unless_empty(f"result[0] <= {t.error_rate_margin}"),
        ),
        # canary P99 / max(stable P99 x ratio, floor); `>= 0` drops the NaN of
        # a histogram without observations (no sample: not judged).
        AnalysisMetric(
            "p99-latency",
            f"({c.p99} >= 0) / clamp_min(({s.p99} >= 0) * {t.p99_ratio}, "
            f"{t.p99_floor_seconds})",
            success=unless_empty("result[0] <= 1"),
        ),
        AnalysisMetric(
            "kafka-error-rate",
            f"{rate(c.kafka_bad, c.kafka_consumed)} - "
            f"({rate(s.kafka_bad, s.kafka_consumed)} or vector(0))",
            success=unless_empty(f"result[0] <= {t.kafka_error_margin}"),
        ),
        AnalysisMetric(
            "score-shift",
            f"abs({mean(c)} - {mean(s)})",
            success=unless_empty(f"result[0] <= {t.score_shift}"),
        ),
    ]


#: Where Prometheus answers in the cluster (k8s/README.md).
PROMETHEUS_ADDRESS = "http://prometheus.monitoring.svc:9090"
ANALYSIS_TEMPLATE = "churn-predictor-canary"


def analysis_template(
    t: Thresholds = Thresholds(), address: str = PROMETHEUS_ADDRESS
) -> dict[str, Any]:
    """The Argo Rollouts AnalysisTemplate of `analysis_metrics` (one measurement
    each, taken after the step's pause: the window is already filled)."""
    metrics: list[dict[str, Any]] = []
    for m in analysis_metrics(t):
        metric: dict[str, Any] = {
            "name": m.name,
            "successCondition": m.success,
        }
        if m.failure is not None:
            metric["failureCondition"] = m.failure
        metric |= {
            "failureLimit": 0,
            "inconclusiveLimit": 0,
            "consecutiveErrorLimit": 2,
            "provider": {"prometheus": {"address": address, "query": m.query}},
        }
        metrics.append(metric)
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {
            "name": ANALYSIS_TEMPLATE,
            "namespace": "predictflow",
            "labels": {
                "app.kubernetes.io/name": "churn-predictor",
                "app.kubernetes.io/part-of": "predictflow",
            },
        },
        "spec": {
            "args": [{"name": "window", "value": "5m"}],
            "metrics": metrics,
        },
    }
