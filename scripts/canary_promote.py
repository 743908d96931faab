#!/usr/bin/env python3
"""Step a PredictFlow canary through 10 -> 30 -> 50 -> 100 %, or roll it back.

For clusters without Argo Rollouts (k8s/README.md). At each step the script
sets the HTTPRoute's backend weights and, in step with them, the canary
Deployment's share of replicas (so of Kafka partitions: canary pods join the
same consumer group), waits an analysis window, and asks Prometheus how the
canary did against stable: the checks of `predictflow.canary`, whose PromQL
the Argo Rollouts AnalysisTemplate shares. Unhealthy, or too little traffic
to judge: roll back (weight 0, canary scaled to 0) and say why. After the
last step `champion` moves to the version `challenger` named at the start,
stable takes the canary's pod template (keeping `champion`), and the canary
goes back to 0. A rollback or an error never touches `champion`; without a
registry or a `challenger` alias only the pod template is promoted.

Exit codes: 0 promoted, 2 rolled back, 1 could not run (Prometheus or the
cluster or the registry unreachable, bad arguments). `--dry-run` prints the
patches and the alias move (one JSON object per line on stdout) instead of
making them; it still reads the registry.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from predictflow.canary.aliases import (
    Aliases,
    champion_stays,
    promote_champion,
    read_models,
    registry_settings,
    say,
)
from predictflow.canary.checks import (
    Thresholds,
    TrackStats,
    analysis_template,
    finite,
    judge,
    track_queries,
    track_stats,
)
from predictflow.canary.plan import Names, canary_replicas

EXIT_PROMOTED, EXIT_ERROR, EXIT_ROLLED_BACK = 0, 1, 2


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
        return finite(result[0]["value"][1])

    def stats(self, track: str, window_s: int) -> TrackStats:
        """The figures `judge` compares, for one track."""
        return track_stats(self.scalar, track_queries(track, f"{window_s}s"))


class Cluster(Protocol):
    """What the script changes in the cluster."""

    def stable_replicas(self) -> int: ...
    def set_weights(self, stable: int, canary: int) -> None: ...
    def scale_canary(self, replicas: int) -> None: ...
    def promote_template(self) -> None: ...


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
    p.add_argument("--prometheus", help="Prometheus base URL (required to run)")
    p.add_argument(
        "--analysis-template",
        action="store_true",
        help="print the Argo Rollouts AnalysisTemplate of these checks and exit",
    )
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
    if args.analysis_template:
        import yaml

        sys.stdout.write(yaml.safe_dump(analysis_template(), sort_keys=False))
        return EXIT_PROMOTED
    if not args.prometheus:
        p.error("--prometheus is required")
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
