from __future__ import annotations

import pytest

from predictflow.canary.checks import (
    WINDOW_ARG,
    Thresholds,
    TrackStats,
    analysis_metrics,
    judge,
    track_queries,
    track_stats,
)
from predictflow.canary.plan import Names, canary_replicas, rollout_replicas
from predictflow.settings import PROJECT_ROOT

OK = TrackStats(
    requests=1000,
    error_rate=0.0,
    p99_seconds=0.02,
    kafka_consumed=500,
    kafka_error_rate=0.0,
    mean_score=0.3,
)


def with_(**changes: object) -> object:
    from dataclasses import replace

    return replace(OK, **changes)


def test_equal_tracks_are_healthy() -> None:
    assert judge(OK, OK, Thresholds()).healthy


@pytest.mark.parametrize(
    ("canary", "reason"),
    [
        (with_(error_rate=0.05), "5xx rate"),
        (with_(p99_seconds=0.2), "P99"),
        (with_(kafka_error_rate=0.1), "Kafka error/DLQ rate"),
        (with_(mean_score=0.6), "mean churn probability"),
        (with_(requests=3), "too little traffic"),
    ],
)
def test_each_regression_is_a_reason_to_roll_back(canary: object, reason: str) -> None:
    verdict = judge(canary, OK, Thresholds())
    assert not verdict.healthy
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_latency_below_the_floor_is_not_judged_as_a_ratio() -> None:
    fast = with_(p99_seconds=0.004)
    slower_but_fast = with_(p99_seconds=0.012)  # 3x, still far under 50 ms
    assert judge(slower_but_fast, fast, Thresholds()).healthy


def test_no_kafka_traffic_on_the_canary_skips_the_kafka_check() -> None:
    assert judge(
        with_(kafka_consumed=0, kafka_error_rate=None), OK, Thresholds()
    ).healthy


@pytest.mark.parametrize(
    ("stable", "weight", "expected"),
    [
        (3, 0, 0),
        (3, 10, 1),
        (3, 30, 1),
        (3, 50, 3),
        (3, 100, 3),
        (9, 10, 1),
        (9, 30, 4),
    ],
)
def test_canary_replica_share_follows_the_weight(
    stable: int, weight: int, expected: int
) -> None:
    assert canary_replicas(stable, weight) == expected


def test_the_route_patch_keeps_matches_and_sets_only_the_weights() -> None:
    import yaml

    route = yaml.safe_load((PROJECT_ROOT / "k8s/base/httproute.yaml").read_text())
    patch = Names().route_patch(route, 70, 30)
    (rule,) = patch["spec"]["rules"]
    assert rule["matches"] == route["spec"]["rules"][0]["matches"]
    assert {r["name"]: r["weight"] for r in rule["backendRefs"]} == {
        "churn-predictor-stable": 70,
        "churn-predictor-canary": 30,
    }
    assert route["spec"]["rules"][0]["backendRefs"][1]["weight"] == 0  # not mutated


def test_a_route_without_the_canary_backend_is_refused() -> None:
    route = {"spec": {"rules": [{"backendRefs": [{"name": "churn-predictor-stable"}]}]}}
    with pytest.raises(ValueError, match="churn-predictor-canary"):
        Names().route_patch(route, 90, 10)


@pytest.mark.parametrize(
    ("weight", "expected"), [(0, (10, 0)), (10, (9, 1)), (30, (7, 3)), (50, (5, 5))]
)
def test_a_rollout_of_ten_pods_splits_them_exactly_by_weight(
    weight: int, expected: tuple[int, int]
) -> None:
    """Argo's dynamicStableScale arithmetic: k8s/README.md's 10-pod canary."""
    assert rollout_replicas(10, weight) == expected


def test_track_stats_turn_counts_into_rates_and_missing_data_into_none() -> None:
    q = track_queries("canary", "60s")
    answers = {q.requests: 200.0, q.errors: 4.0, q.p99: None, q.kafka_consumed: 0.0}
    answers |= {q.kafka_bad: None, q.score_sum: 30.0, q.score_count: 100.0}
    stats = track_stats(answers.__getitem__, q)
    assert stats == TrackStats(
        requests=200.0,
        error_rate=0.02,
        p99_seconds=None,
        kafka_consumed=0.0,
        kafka_error_rate=None,
        mean_score=0.3,
    )


def test_the_analysis_metrics_are_built_from_the_scripts_queries() -> None:
    """One place for the PromQL: every per-track query the script asks is part
    of an Argo metric, for both tracks."""
    queries = " ".join(m.query for m in analysis_metrics())
    for track in ("canary", "stable"):
        for promql in vars(track_queries(track, WINDOW_ARG)).values():
            assert promql in queries, promql
    assert {m.name for m in analysis_metrics()} == {
        "canary-traffic",
        "error-rate",
        "p99-latency",
        "kafka-error-rate",
        "score-shift",
    }
