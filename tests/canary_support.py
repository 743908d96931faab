"""Canary helpers: the script as a module, and Argo Rollouts' analysis rules."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

from devtools.gobuild import go_build
from predictflow.canary.checks import WINDOW_ARG
from predictflow.settings import PROJECT_ROOT

ARGO_EVAL = PROJECT_ROOT / "tools" / "argo-eval"
#: What is deployed (tests/deploy keeps it equal to predictflow.canary's).
ANALYSIS_TEMPLATE = (
    PROJECT_ROOT / "k8s/overlays/argo-rollouts/rollout/analysistemplate.yaml"
)


def canary_promote() -> ModuleType:
    """The script's module, loaded once per process."""
    if (loaded := sys.modules.get("canary_promote")) is not None:
        return loaded
    path = PROJECT_ROOT / "scripts" / "canary_promote.py"
    spec = importlib.util.spec_from_file_location("canary_promote", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["canary_promote"] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def argo_eval() -> Path:
    """tools/argo-eval built from the module cache (`make k8s-tools` fills it)."""
    out = Path(tempfile.mkdtemp(prefix="argo-eval-")) / "argo-eval"
    try:
        return go_build(ARGO_EVAL, out, offline=True)
    except RuntimeError as exc:
        pytest.fail(f"{exc}\n(the analysis tests need it: make k8s-tools)")


def evaluate(measurements: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Argo's phase of each {result, success, failure} (tools/argo-eval)."""
    done = subprocess.run(
        [str(argo_eval())],
        input=json.dumps(list(measurements)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    verdicts: list[dict[str, str]] = json.loads(done.stdout)
    return verdicts


def prometheus_result(url: str, promql: str) -> list[str] | str:
    """An instant query's answer as Argo's Prometheus provider passes it on:
    a vector as its samples' values, a scalar as its value (strings, so NaN
    and infinities survive JSON)."""
    r = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=15)
    r.raise_for_status()
    data = r.json()["data"]
    if data["resultType"] == "scalar":
        return str(data["result"][1])
    assert data["resultType"] == "vector", data["resultType"]
    return [sample["value"][1] for sample in data["result"]]


def analyse(url: str, window: str) -> dict[str, tuple[str, object]]:
    """One measurement of every metric of the deployed AnalysisTemplate, on
    this Prometheus: metric name -> (phase, the result it was decided on)."""
    template = yaml.safe_load(ANALYSIS_TEMPLATE.read_text())
    measurements, names = [], []
    for metric in template["spec"]["metrics"]:
        query = metric["provider"]["prometheus"]["query"].replace(WINDOW_ARG, window)
        measurements.append(
            {
                "result": prometheus_result(url, query),
                "success": metric.get("successCondition", ""),
                "failure": metric.get("failureCondition", ""),
            }
        )
        names.append(metric["name"])
    verdicts = evaluate(measurements)
    return {
        name: (v["phase"], m["result"])
        for name, v, m in zip(names, verdicts, measurements, strict=True)
    }
