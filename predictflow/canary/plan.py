"""Replica and route arithmetic of each canary step, on both paths."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

#: The alias canary pods follow (k8s/base/configmap.yaml); stable pods follow
#: the champion alias of the settings.
CHALLENGER = "challenger"
#: Canary weights, in order, of both paths.
STEPS = (10, 30, 50, 100)


def canary_replicas(stable: int, weight: int) -> int:
    """Canary pods whose share of all pods matches the REST weight (at least 1).

    canary_promote.py's arithmetic: stable keeps its pods, the canary is added.
    """
    if weight <= 0:
        return 0
    if weight >= 100:
        return max(stable, 1)
    return max(1, round(stable * weight / (100 - weight)))


def rollout_replicas(replicas: int, weight: int) -> tuple[int, int]:
    """(stable, canary) pods of an Argo Rollout at `weight` %.

    Argo's arithmetic with `dynamicStableScale`: each side gets the ceiling of
    its weight's share of `spec.replicas`.
    """
    canary = math.ceil(replicas * weight / 100)
    stable = math.ceil(replicas * (100 - weight) / 100)
    return stable, canary


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
        spec = template["spec"]
        for constraint in spec.get("topologySpreadConstraints") or []:
            labels = constraint.get("labelSelector", {}).get("matchLabels", {})
            if "track" in labels:
                labels["track"] = "stable"
        for container in spec["containers"]:
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
