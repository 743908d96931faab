"""The Argo Rollouts overlay: the Rollout, its canary steps and analysis.

tests/deploy/test_k8s.py renders and checks it like every kustomization
(schemas, pod security, settings); this file checks what only it has.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from predictflow.canary.checks import analysis_template
from predictflow.canary.plan import STEPS, Names, rollout_replicas
from tests.deploy.test_k8s import ANALYSIS, ARGO, ROLLOUT, Manifests


@pytest.fixture(scope="module")
def argo() -> Manifests:
    return Manifests(ARGO)


def _canary(argo: Manifests) -> dict[str, Any]:
    return dict(argo.get(*ROLLOUT)["spec"]["strategy"]["canary"])


def test_the_rollout_runs_the_stable_deployments_pod(argo: Manifests) -> None:
    """Copied by kustomize, not written twice: only the track label (Argo's
    stable/canaryMetadata) and the spread (per ReplicaSet) differ."""
    stable = Manifests("k8s").get("Deployment", "churn-predictor")["spec"]
    rollout = argo.get(*ROLLOUT)["spec"]
    assert "workloadRef" not in rollout, "KEDA and the HPA scale a template"
    assert "replicas" not in rollout, "the HPA owns it"
    expected = copy.deepcopy(stable["template"])
    del expected["metadata"]["labels"]["track"]
    (spread,) = expected["spec"]["topologySpreadConstraints"]
    del spread["labelSelector"]["matchLabels"]["track"]
    spread["matchLabelKeys"] = ["rollouts-pod-template-hash"]
    assert rollout["template"] == expected
    assert rollout["selector"] == {
        "matchLabels": {"app.kubernetes.io/name": "churn-predictor"}
    }
    canary = _canary(argo)
    assert canary["stableMetadata"] == {"labels": {"track": "stable"}}
    assert canary["canaryMetadata"] == {"labels": {"track": "canary"}}


def test_steps_set_the_weights_with_analysis_after_each(argo: Manifests) -> None:
    steps = _canary(argo)["steps"]
    weights = [s["setWeight"] for s in steps if "setWeight" in s]
    assert tuple(weights) == STEPS
    template = argo.get(*ANALYSIS)
    declared = {a["name"] for a in template["spec"]["args"]}
    for i, step in enumerate(steps):
        if "setWeight" not in step:
            continue
        pause, analysis = steps[i + 1], steps[i + 2]
        assert set(pause) == {"pause"} and pause["pause"]["duration"], i
        (ref,) = analysis["analysis"]["templates"]
        assert ref == {"templateName": template["metadata"]["name"]}
        passed = {a["name"] for a in analysis["analysis"].get("args", [])}
        assert passed <= declared


def test_traffic_and_pods_follow_the_weight(argo: Manifests) -> None:
    """The Gateway API plugin moves the HTTPRoute's weights between the two
    Services; dynamicStableScale sizes both sides by the weight; an abort
    scales the canary down once the gateway has dropped it."""
    canary = _canary(argo)
    names = Names()
    assert (canary["stableService"], canary["canaryService"]) == (
        names.stable_service,
        names.canary_service,
    )
    (plugin,) = canary["trafficRouting"]["plugins"].items()
    assert plugin == (
        "argoproj-labs/gatewayAPI",
        {"httpRoute": names.route, "namespace": names.namespace},
    )
    route = argo.get("HTTPRoute", names.route)
    refs = {r["name"] for rule in route["spec"]["rules"] for r in rule["backendRefs"]}
    assert {names.stable_service, names.canary_service} <= refs
    assert canary["dynamicStableScale"] is True
    assert "setCanaryScale" not in str(canary["steps"])
    assert canary["abortScaleDownDelaySeconds"] >= 10


def test_the_analysis_template_is_the_scripts_checks(argo: Manifests) -> None:
    """One place for the PromQL: the YAML is predictflow.canary's template
    (regenerate it with scripts/canary_promote.py --analysis-template)."""
    assert argo.get(*ANALYSIS) == analysis_template()


def test_partitions_make_the_canary_share_exact(
    argo: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At every pod count the HPA may set, each step's canary pods are that
    share of the pods, and the partitions divide evenly among them."""
    from tests.deploy.test_k8s import _settings_for

    (container,) = argo.get(*ROLLOUT)["spec"]["template"]["spec"]["containers"]
    settings = _settings_for(argo.container_env(container), monkeypatch)
    partitions = settings.kafka.request_partitions
    assert partitions >= 10
    hpa = argo.get("HorizontalPodAutoscaler", "churn-predictor")["spec"]
    for replicas in (hpa["minReplicas"], hpa["maxReplicas"]):
        assert partitions % replicas == 0, replicas
        for weight in STEPS[:-1]:
            stable, canary = rollout_replicas(replicas, weight)
            assert stable + canary == replicas
            assert canary * partitions // replicas == partitions * weight // 100
