#!/usr/bin/env python3
"""Step a PredictFlow canary through 10 -> 30 -> 50 -> 100 %, or roll it back.

At each step the script sets the REST weight (the Gateway API HTTPRoute's
backend weights) and, in step with it, the canary Deployment's share of
replicas: canary pods join the same Kafka consumer group, so their share of
pods is their share of partitions. It then waits an analysis window and asks
Prometheus how the canary did against the stable track:

- REST 5xx rate (BentoML's `bentoml_service_request_total`),
- REST P99 latency (`bentoml_service_request_duration_seconds`),
- Kafka error and dead-letter rate per consumed record,
- the mean churn probability served (a shifted score distribution is a model
  problem even when nothing errors).

Healthy: the next step. Unhealthy, or too little traffic to judge: roll back
(REST weight 0, canary scaled to 0) and say why. After the last step the
MLflow alias `champion` moves to the version `challenger` names (the one
canary pods follow, read when the script starts), the stable Deployment takes
the canary's pod template (image; its alias stays `champion`), the route goes
back to stable and the canary is scaled to 0. Stable pods follow `champion`,
so they load the new version without a rollout. A rollback or an error never
touches `champion`. Without a registry (`--mlflow-tracking-uri`,
`MLFLOW_TRACKING_URI` or `PREDICTFLOW_MLFLOW__TRACKING_URI`) or without a
`challenger` alias, only the pod template is promoted.

Metrics are told apart by a `track` label (`stable` / `canary`), which the
Prometheus scrape config copies from the pod label of the same name.

Exit codes: 0 promoted, 2 rolled back, 1 could not run (Prometheus or the
cluster or the registry unreachable, bad arguments). `--dry-run` prints the
patches and the alias move (one JSON object per line on stdout) instead of
making them; it still reads the registry.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

if TYPE_CHECKING:
    from predictflow.settings import Settings

EXIT_PROMOTED, EXIT_ERROR, EXIT_ROLLED_BACK = 0, 1, 2
#: The alias canary pods follow (k8s/base/configmap.yaml); stable pods follow
#: the champion alias of the settings.
CHALLENGER = "challenger"


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


class Prometheus:
    """Instant PromQL queries."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=15)

    def scalar(self, promql: str) -> float | None:
        """The query's single value, or None when it has no (finite) data."""
        r = self.client.get("/api/v1/query", params={"query": promql})
        r.raise_for_status()
        result = r.json()["data"]["result"]
        if not result:
            return None
        value = float(result[0]["value"][1])
        return value if math.isfinite(value) else None

    def stats(self, track: str, window_s: int) -> TrackStats:
        """The figures `judge` compares, for one track."""
        w = f"{window_s}s"
        rest = f'track="{track}",endpoint=~"/predict|/predict_batch"'
        requests = self.scalar(
            f"sum(increase(bentoml_service_request_total{{{rest}}}[{w}]))"
        )
        errors = self.scalar(
            f'sum(increase(bentoml_service_request_total{{{rest},http_response_code=~"5.."}}[{w}]))'
        )
        p99 = self.scalar(
            "histogram_quantile(0.99, sum by (le) (rate("
            f'bentoml_service_request_duration_seconds_bucket{{track="{track}",'
            f'endpoint="/predict"}}[{w}])))'
        )
        k = f'track="{track}"'
        consumed = self.scalar(
            f"sum(increase(predictflow_kafka_consumed_total{{{k}}}[{w}]))"
        )
        kafka_bad = self.scalar(
            f"sum(increase(predictflow_kafka_dead_lettered_total{{{k}}}[{w}])) "
            f"+ sum(increase(predictflow_kafka_errors_total{{{k}}}[{w}]))"
        )
        score_sum = self.scalar(
            f"sum(increase(predictflow_churn_probability_sum{{{k}}}[{w}]))"
        )
        score_count = self.scalar(
            f"sum(increase(predictflow_churn_probability_count{{{k}}}[{w}]))"
        )
        n = requests or 0.0
        c = consumed or 0.0
        return TrackStats(
            requests=n,
            error_rate=(errors or 0.0) / n if n else None,
            p99_seconds=p99,
            kafka_consumed=c,
            kafka_error_rate=(kafka_bad or 0.0) / c if c else None,
            mean_score=(score_sum / score_count)
            if score_sum is not None and score_count
            else None,
        )


class Cluster(Protocol):
    """What the script changes in the cluster."""

    def stable_replicas(self) -> int: ...
    def set_weights(self, stable: int, canary: int) -> None: ...
    def scale_canary(self, replicas: int) -> None: ...
    def promote_template(self) -> None: ...


@dataclass(frozen=True)
class Names:
    """The objects of k8s/ the script patches."""

    namespace: str = "predictflow"
    route: str = "churn-predictor"
    stable: str = "churn-predictor"
    canary: str = "churn-predictor-canary"
    stable_service: str = "churn-predictor-stable"
    canary_service: str = "churn-predictor-canary"
    stable_config: str = "churn-predictor-stable-config"
    canary_config: str = "churn-predictor-canary-config"

    def stable_template(self, canary: dict[str, Any]) -> dict[str, Any]:
        """The canary's pod template as the stable Deployment's.

        Only the track label and the per-track ConfigMap change: stable pods
        must go on following `champion`, never the canary's `challenger`.
        """
        template = copy.deepcopy(canary)
        template["metadata"]["labels"]["track"] = "stable"
        for container in template["spec"]["containers"]:
            for source in container.get("envFrom") or []:
                ref = source.get("configMapRef") or {}
                if ref.get("name") == self.canary_config:
                    ref["name"] = self.stable_config
        return template

    def route_patch(
        self, route: dict[str, Any], stable: int, canary: int
    ) -> dict[str, Any]:
        """A merge patch giving the route's stable/canary backendRefs these weights.

        A merge patch replaces lists whole, so the patch carries every rule as
        it is (matches, filters, other backends) with only the two weights set.
        """
        weights = {self.stable_service: stable, self.canary_service: canary}
        rules = copy.deepcopy(route["spec"]["rules"])
        found = set()
        for rule in rules:
            for ref in rule.get("backendRefs", []):
                if ref["name"] in weights:
                    ref["weight"] = weights[ref["name"]]
                    found.add(ref["name"])
        if found != set(weights):
            raise ValueError(f"HTTPRoute lacks backendRefs {set(weights) - found}")
        return {"spec": {"rules": rules}}


class DryRun:
    """Prints each patch as a JSON line instead of sending it.

    The route is read from the manifest (k8s/base/httproute.yaml), so the
    printed patches are the ones that would be sent.
    """

    def __init__(
        self, names: Names, stable_replicas: int, route_manifest: Path
    ) -> None:
        import yaml

        self.names = names
        self._stable = stable_replicas
        self.route = yaml.safe_load(route_manifest.read_text())

    def _emit(self, kind: str, name: str, patch: dict[str, Any]) -> None:
        line = {
            "kind": kind,
            "namespace": self.names.namespace,
            "name": name,
            "patch": patch,
        }
        sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
        sys.stdout.flush()

    def stable_replicas(self) -> int:
        return self._stable

    def set_weights(self, stable: int, canary: int) -> None:
        patch = self.names.route_patch(self.route, stable, canary)
        self._emit("HTTPRoute", self.names.route, patch)

    def scale_canary(self, replicas: int) -> None:
        self._emit(
            "Deployment/scale", self.names.canary, {"spec": {"replicas": replicas}}
        )

    def promote_template(self) -> None:
        self._emit(
            "Deployment",
            self.names.stable,
            {"spec": {"template": f"<pod template of {self.names.canary}>"}},
        )


class Kube:
    """Patches through the Kubernetes API (official Python client)."""

    def __init__(self, names: Names) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self.names = names
        self.apps = client.AppsV1Api()
        self.custom = client.CustomObjectsApi()

    def stable_replicas(self) -> int:
        d = self.apps.read_namespaced_deployment(
            self.names.stable, self.names.namespace
        )
        return int(d.spec.replicas or 1)

    def set_weights(self, stable: int, canary: int) -> None:
        route = ("gateway.networking.k8s.io", "v1", self.names.namespace, "httproutes")
        current = self.custom.get_namespaced_custom_object(*route, self.names.route)
        patch = self.names.route_patch(current, stable, canary)
        self.custom.patch_namespaced_custom_object(*route, self.names.route, patch)

    def scale_canary(self, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(
            self.names.canary, self.names.namespace, {"spec": {"replicas": replicas}}
        )

    def promote_template(self) -> None:
        canary = self.apps.read_namespaced_deployment(
            self.names.canary, self.names.namespace
        )
        template = self.names.stable_template(
            self.apps.api_client.sanitize_for_serialization(canary.spec.template)
        )
        self.apps.patch_namespaced_deployment(
            self.names.stable, self.names.namespace, {"spec": {"template": template}}
        )


class Aliases:
    """The registry's `champion` and `challenger` (predictflow.registry).

    A dry run reads the registry but prints the champion move instead of
    making it.
    """

    def __init__(self, settings: Settings, dry_run: bool) -> None:
        self.settings = settings
        self.dry_run = dry_run
        self.champion = settings.mlflow.champion_alias

    def version(self, alias: str) -> str | None:
        """The version `alias` names (None: no such alias)."""
        from predictflow.registry import alias_version

        return alias_version(self.settings, alias)

    def move_champion(self, version: str) -> None:
        """Point `champion` at `version` (the `predictflow promote` move)."""
        if self.dry_run:
            line = {
                "kind": "MLflowAlias",
                "model": self.settings.mlflow.model_name,
                "name": self.champion,
                "patch": {"version": version},
            }
            sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
            sys.stdout.flush()
            return
        from predictflow.registry import set_alias

        set_alias(self.settings, version, self.champion)


@dataclass(frozen=True)
class Models:
    """Which registered versions the canary compares (read before step one)."""

    champion: str | None
    challenger: str | None


class ChallengerMoved(RuntimeError):
    """`challenger` changed during the canary: what was judged is not what it names."""


def registry_settings(uri: str | None) -> Settings | None:
    """Settings on the registry to use, or None when none is configured.

    Only a registry named on purpose counts (the flag, `MLFLOW_TRACKING_URI`,
    `PREDICTFLOW_MLFLOW__TRACKING_URI`): the settings' fallback, a local SQLite
    file, is never the cluster's registry.
    """
    from predictflow.settings import Settings

    settings = Settings()
    uri = uri or settings.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    mlflow = settings.mlflow.model_copy(update={"tracking_uri": uri})
    return settings.model_copy(update={"mlflow": mlflow})


def read_models(aliases: Aliases | None) -> Models:
    """The champion and challenger versions, said to the operator."""
    if aliases is None:
        say(
            "no MLflow registry configured (--mlflow-tracking-uri, "
            "MLFLOW_TRACKING_URI or PREDICTFLOW_MLFLOW__TRACKING_URI): champion "
            "will not move; only the pod template is promoted"
        )
        return Models(None, None)
    models = Models(aliases.version(aliases.champion), aliases.version(CHALLENGER))
    if models.challenger is None:
        say(
            f"no {CHALLENGER} alias in the registry: canary pods serve their "
            f"image's model; {aliases.champion} will not move (version "
            f"{models.champion or 'none'}); only the pod template is promoted"
        )
    else:
        say(
            f"canary follows {CHALLENGER} = version {models.challenger}; "
            f"{aliases.champion} is version {models.champion or 'none'}"
        )
    return models


def champion_stays(aliases: Aliases | None, models: Models) -> None:
    """Say that the champion was left where it was."""
    if aliases is None:
        say("champion not touched (no registry)")
    else:
        say(f"{aliases.champion} stays version {models.champion or 'none'}")


def promote_champion(aliases: Aliases | None, models: Models) -> None:
    """At 100 %: `champion` to the version judged, if the registry names one."""
    if aliases is None or models.challenger is None:
        champion_stays(aliases, models)
        return
    now = aliases.version(CHALLENGER)
    if now != models.challenger:
        raise ChallengerMoved(
            f"{CHALLENGER} moved from version {models.challenger} to {now} during "
            f"the canary; {aliases.champion} not moved"
        )
    if models.challenger == models.champion:
        champion_stays(aliases, models)
        return
    aliases.move_champion(models.challenger)
    would = "would move (dry run)" if aliases.dry_run else "moved"
    say(
        f"{aliases.champion} {would} from version {models.champion or 'none'} "
        f"to {models.challenger}"
    )


def canary_replicas(stable: int, weight: int) -> int:
    """Canary pods whose share of all pods matches the REST weight (at least 1)."""
    if weight <= 0:
        return 0
    if weight >= 100:
        return max(stable, 1)
    return max(1, round(stable * weight / (100 - weight)))


def say(message: str) -> None:
    """Progress for the operator (stderr; stdout carries dry-run patches)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def back_to_stable(cluster: Cluster) -> None:
    """All REST traffic to stable, then no canary pods (so no Kafka share)."""
    cluster.set_weights(100, 0)
    cluster.scale_canary(0)


def rollout(
    cluster: Cluster,
    prometheus: Prometheus,
    steps: list[int],
    window_s: int,
    thresholds: Thresholds,
    settle_s: float,
    aliases: Aliases | None = None,
) -> int:
    """Walk the steps; returns the exit code. Any error sends traffic back first.

    `champion` moves only after the last step passed, before the pod template
    (a registry that fails then leaves the stable template as it was).
    """
    models = read_models(aliases)
    stable = cluster.stable_replicas()
    try:
        for weight in steps:
            replicas = canary_replicas(stable, weight)
            say(f"step {weight}%: canary weight {weight}, canary replicas {replicas}")
            cluster.scale_canary(replicas)
            cluster.set_weights(100 - weight, weight)
            time.sleep(window_s + settle_s)
            c = prometheus.stats("canary", window_s)
            s = prometheus.stats("stable", window_s)
            say(f"  canary {c}\n  stable {s}")
            verdict = judge(c, s, thresholds)
            if not verdict.healthy:
                say(f"ROLLBACK at {weight}%: " + "; ".join(verdict.reasons))
                back_to_stable(cluster)
                champion_stays(aliases, models)
                return EXIT_ROLLED_BACK
            say(f"  healthy at {weight}%")
        say("PROMOTED: stable takes the canary's pod template; canary scaled to 0")
        promote_champion(aliases, models)
        cluster.promote_template()
        back_to_stable(cluster)
        return EXIT_PROMOTED
    except Exception:
        say(
            "ERROR during the rollout: sending all traffic back to stable "
            "(champion not moved by this run)"
        )
        back_to_stable(cluster)
        raise


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the rollout."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prometheus", required=True, help="Prometheus base URL")
    p.add_argument("--steps", default="10,30,50,100", help="canary weights, in order")
    p.add_argument("--window", type=int, default=300, help="analysis window, seconds")
    p.add_argument(
        "--settle", type=float, default=15.0, help="extra seconds for scrapes to land"
    )
    p.add_argument("--namespace", default="predictflow")
    p.add_argument(
        "--mlflow-tracking-uri",
        help="the registry whose champion moves at 100 %% (default: "
        "PREDICTFLOW_MLFLOW__TRACKING_URI, else MLFLOW_TRACKING_URI; none: "
        "the pod template only)",
    )
    p.add_argument("--dry-run", action="store_true", help="print patches, send none")
    p.add_argument(
        "--route-manifest",
        type=Path,
        default=Path(__file__).resolve().parent.parent
        / "k8s"
        / "base"
        / "httproute.yaml",
        help="the HTTPRoute a dry run patches",
    )
    p.add_argument(
        "--stable-replicas", type=int, default=2, help="stable replicas (dry run only)"
    )
    p.add_argument("--min-requests", type=int, default=Thresholds.min_requests)
    p.add_argument("--error-margin", type=float, default=Thresholds.error_rate_margin)
    p.add_argument("--p99-ratio", type=float, default=Thresholds.p99_ratio)
    p.add_argument("--score-shift", type=float, default=Thresholds.score_shift)
    args = p.parse_args(argv)
    try:
        steps = [int(x) for x in args.steps.split(",")]
    except ValueError:
        p.error("--steps takes comma-separated integers")
    if not steps or steps != sorted(steps) or not 0 < steps[0] <= steps[-1] <= 100:
        p.error("--steps must rise within 1..100")
    names = Names(namespace=args.namespace)
    thresholds = Thresholds(
        error_rate_margin=args.error_margin,
        p99_ratio=args.p99_ratio,
        score_shift=args.score_shift,
        min_requests=args.min_requests,
    )
    try:
        settings = registry_settings(args.mlflow_tracking_uri)
        aliases = None if settings is None else Aliases(settings, args.dry_run)
        cluster: Cluster = (
            DryRun(names, args.stable_replicas, args.route_manifest)
            if args.dry_run
            else Kube(names)
        )
        return rollout(
            cluster,
            Prometheus(args.prometheus),
            steps,
            args.window,
            thresholds,
            args.settle,
            aliases,
        )
    except Exception as exc:  # noqa: BLE001 - any failure: say it, exit 1
        say(f"cannot run: {type(exc).__name__}: {exc}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
