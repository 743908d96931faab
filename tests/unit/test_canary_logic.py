from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from predictflow.settings import PROJECT_ROOT


def _load() -> ModuleType:
    path = PROJECT_ROOT / "scripts" / "canary_promote.py"
    spec = importlib.util.spec_from_file_location("canary_promote", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["canary_promote"] = module
    spec.loader.exec_module(module)
    return module


cp = _load()
OK = cp.TrackStats(
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
    assert cp.judge(OK, OK, cp.Thresholds()).healthy


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
    verdict = cp.judge(canary, OK, cp.Thresholds())
    assert not verdict.healthy
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_latency_below_the_floor_is_not_judged_as_a_ratio() -> None:
    fast = with_(p99_seconds=0.004)
    slower_but_fast = with_(p99_seconds=0.012)  # 3x, still far under 50 ms
    assert cp.judge(slower_but_fast, fast, cp.Thresholds()).healthy


def test_no_kafka_traffic_on_the_canary_skips_the_kafka_check() -> None:
    assert cp.judge(
        with_(kafka_consumed=0, kafka_error_rate=None), OK, cp.Thresholds()
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
    assert cp.canary_replicas(stable, weight) == expected


def test_the_route_patch_keeps_matches_and_sets_only_the_weights() -> None:
    import yaml

    route = yaml.safe_load((PROJECT_ROOT / "k8s/base/httproute.yaml").read_text())
    patch = cp.Names().route_patch(route, 70, 30)
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
        cp.Names().route_patch(route, 90, 10)
