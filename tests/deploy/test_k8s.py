"""The Kubernetes manifests in k8s/: rendered, schema-validated and checked.

Every kustomization (the base and each overlay) is rendered by a real
kustomize (`kustomize build`, else `kubectl kustomize`). Built-in kinds are
validated against the Kubernetes JSON schemas (kubernetes-validate, strict:
unknown fields fail) for 1.30 and the newest version it ships. The CRD kinds
(Gateway API's HTTPRoute, Argo Rollouts' Rollout and AnalysisTemplate, KEDA's
ScaledObject and TriggerAuthentication) are validated against their CRDs'
schemas by kubernetes-models (tools/k8s-validate, `make k8s-validate-deps`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from bentoml._internal.container.generate import BENTO_HOME, BENTO_PATH, BENTO_UID_GID
from kubernetes_validate import utils as kv_utils
from pydantic import BaseModel

from predictflow.canary.plan import CHALLENGER, Names
from predictflow.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
K8S_VALIDATE = ROOT / "tools" / "k8s-validate"
NAMESPACE = "predictflow"

CONSUMER = ("Deployment", "churn-consumer")
SCALED_CONSUMER = ("ScaledObject", "churn-consumer")
KEDA_KAFKA_LOGIN = ("TriggerAuthentication", "churn-consumer-kafka")
ROLLOUT = ("Rollout", "churn-predictor")
ANALYSIS = ("AnalysisTemplate", "churn-predictor-canary")
ARGO = "k8s/overlays/argo-rollouts"
# Kustomization -> the optional objects it adds to the base.
KUSTOMIZATIONS: dict[str, set[tuple[str, str]]] = {
    "k8s": set(),
    "k8s/overlays/standalone-consumer": {CONSUMER},
    "k8s/overlays/standalone-consumer-keda": {
        CONSUMER,
        SCALED_CONSUMER,
        KEDA_KAFKA_LOGIN,
    },
    ARGO: {ROLLOUT, ANALYSIS},
}
# Kustomization -> contract objects it replaces (the Rollout replaces both
# Deployments; its pods all follow `champion`).
REPLACED: dict[str, set[tuple[str, str]]] = {
    ARGO: {
        ("Deployment", "churn-predictor"),
        ("Deployment", "churn-predictor-canary"),
        ("ConfigMap", "churn-predictor-canary-config"),
    }
}
WITH_DEPLOYMENTS = sorted(k for k in KUSTOMIZATIONS if k not in REPLACED)
WITH_CONSUMER = sorted(k for k, extra in KUSTOMIZATIONS.items() if CONSUMER in extra)
WITH_KEDA = sorted(k for k, extra in KUSTOMIZATIONS.items() if SCALED_CONSUMER in extra)
CRD_KINDS = {
    "HTTPRoute",
    "ScaledObject",
    "TriggerAuthentication",
    "Rollout",
    "AnalysisTemplate",
}
# The Secret operators create with the Kafka login and the brokers' CA
# (k8s/README.md): its keys, and the settings each one feeds.
KAFKA_SECRET = "churn-predictor-kafka"  # noqa: S105 - a Secret's name
KAFKA_SECRET_ENV = {
    "PREDICTFLOW_KAFKA__SASL_USERNAME": "sasl-username",
    "PREDICTFLOW_KAFKA__SASL_PASSWORD": "sasl-password",
}
KAFKA_SECRET_CA = "ca.crt"  # noqa: S105 - a key of that Secret
# KEDA's kafka scaler names for the same login (TriggerAuthentication).
KEDA_KAFKA_PARAMETERS = {"username": "sasl-username", "password": "sasl-password"}
KEDA_SASL = {"SCRAM-SHA-512": "scram_sha512", "SCRAM-SHA-256": "scram_sha256"}
SCHEMA_VERSIONS = ["1.30", kv_utils.latest_version()]

# Names scripts/canary_promote.py and the README rely on.
CONTRACT: set[tuple[str, str]] = {
    ("Namespace", NAMESPACE),
    ("ServiceAccount", "churn-predictor"),
    ("ConfigMap", "churn-predictor-config"),
    ("ConfigMap", "churn-predictor-stable-config"),
    ("ConfigMap", "churn-predictor-canary-config"),
    ("Deployment", "churn-predictor"),
    ("Deployment", "churn-predictor-canary"),
    ("Service", "churn-predictor"),
    ("Service", "churn-predictor-stable"),
    ("Service", "churn-predictor-canary"),
    ("HTTPRoute", "churn-predictor"),
    ("HorizontalPodAutoscaler", "churn-predictor"),
    ("PodDisruptionBudget", "churn-predictor"),
    ("NetworkPolicy", "churn-predictor"),
}
CLUSTER_SCOPED = {"Namespace"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Rollout"}
EGRESS_PORTS = {53, 6379, 9092, 5000}  # DNS, Redis, Kafka, MLflow
# The MLflow alias each workload follows (the canary's is the one
# scripts/canary_promote.py reads and promotes).
ALIAS_OF = {
    "churn-predictor": "champion",
    "churn-predictor-canary": "challenger",
    "churn-consumer": "champion",
}
PRESTOP_SECONDS_MIN = 5
PROBE_HANDLERS = {"httpGet", "tcpSocket", "grpc"}
CONTAINER_TMP = "/tmp"  # noqa: S108 - the container's, checked to be an emptyDir

# BentoML 1.4 at run time: `bentoml_home()` creates these under BENTOML_HOME
# (bentoml/_internal/configuration/containers.py) and `bentoml serve` wipes
# BENTOML_HOME/prometheus_multiproc_dir (bentoml/serving.py).
BENTOML_STORE_DIRS = ("bentos", "models", "envs", "tmp")
PROMETHEUS_DIR = "prometheus_multiproc_dir"

# Pod Security Standards, "restricted" profile (Kubernetes 1.30).
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
}

# KEDA's kafka scaler reads these trigger metadata keys; the CRD's schema
# leaves `metadata` a free map of strings, so its own schema cannot say.
KAFKA_SCALER_KEYS = {
    "bootstrapServers",
    "bootstrapServersFromEnv",
    "consumerGroup",
    "consumerGroupFromEnv",
    "topic",
    "topicFromEnv",
    "lagThreshold",
    "activationLagThreshold",
    "offsetResetPolicy",
    "allowIdleConsumers",
    "excludePersistentLag",
    "scaleToZeroOnInvalidOffset",
    "limitToPartitionsWithLag",
    "version",
    "sasl",
    "tls",
}


def _kustomize() -> list[str]:
    if exe := shutil.which("kustomize"):
        return [exe, "build"]
    if exe := shutil.which("kubectl"):
        return [exe, "kustomize"]
    pytest.fail(
        "rendering k8s/ needs `kustomize` or `kubectl` (which embeds kustomize) on PATH"
    )


@functools.cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    """The objects `kustomize build` makes of one kustomization directory."""
    out = subprocess.run(
        [*_kustomize(), str(ROOT / kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        pytest.fail(f"kustomize build {kustomization} failed:\n{out.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


@dataclass(frozen=True)
class Pod:
    """A pod template and the workload that owns it."""

    owner: dict[str, Any]
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.owner['kind']}/{self.owner['metadata']['name']}"

    def containers(self) -> Iterator[dict[str, Any]]:
        for key in ("initContainers", "containers", "ephemeralContainers"):
            yield from self.spec.get(key, [])

    def serves_http(self, container: dict[str, Any]) -> bool:
        return any(p.get("name") == "http" for p in container.get("ports", []))


class Manifests:
    """The rendered objects of one kustomization."""

    def __init__(self, kustomization: str) -> None:
        self.kustomization = kustomization
        self.objects = render(kustomization)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} in {self.kustomization}"
        return found[0]

    def pods(self) -> list[Pod]:
        pods = []
        for obj in self.objects:
            if obj["kind"] not in WORKLOAD_KINDS:
                continue
            template = obj["spec"]["template"]
            meta = template.get("metadata", {})
            # A Rollout's pods: its template with each side's metadata.
            sides = [{}]
            if obj["kind"] == "Rollout":
                canary = obj["spec"]["strategy"]["canary"]
                sides = [canary["stableMetadata"], canary["canaryMetadata"]]
            for side in sides:
                pods.append(
                    Pod(
                        owner=obj,
                        labels=meta.get("labels", {}) | side.get("labels", {}),
                        annotations=meta.get("annotations", {})
                        | side.get("annotations", {}),
                        spec=template["spec"],
                    )
                )
        return pods

    def pods_selected_by(self, selector: dict[str, str]) -> list[Pod]:
        return [p for p in self.pods() if selector.items() <= p.labels.items()]

    def container_env(self, container: dict[str, Any]) -> dict[str, str]:
        """The container's environment from ConfigMaps and `env` (which wins).

        A variable from a Secret (not in the manifests: operators create it)
        reads `<secret NAME/KEY>`.
        """
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            assert set(source) == {"configMapRef"}, f"unsupported envFrom {source}"
            configmap = self.get("ConfigMap", source["configMapRef"]["name"])
            env.update(configmap.get("data", {}))
        for var in container.get("env", []):
            if "valueFrom" in var:
                ref = var["valueFrom"]
                assert set(ref) == {"secretKeyRef"}, f"{var['name']}: {ref}"
                secret = ref["secretKeyRef"]
                env[var["name"]] = f"<secret {secret['name']}/{secret['key']}>"
            else:
                env[var["name"]] = var["value"]
        return env


@pytest.fixture(params=sorted(KUSTOMIZATIONS))
def manifests(request: pytest.FixtureRequest) -> Manifests:
    return Manifests(request.param)


def _port_number(container: dict[str, Any], port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def _is_under(path: str, parent: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(parent))


def _writable(container: dict[str, Any], pod: Pod, path: str) -> bool:
    """Whether `path` is inside a writable emptyDir mount of the container."""
    empty_dirs = {v["name"] for v in pod.spec.get("volumes", []) if "emptyDir" in v}
    return any(
        m["name"] in empty_dirs
        and not m.get("readOnly", False)
        and _is_under(path, m["mountPath"])
        for m in container.get("volumeMounts", [])
    )


def _setting_field(key: str) -> bool:
    """Whether a `PREDICTFLOW_*` variable names a field of `Settings`."""
    prefix = Settings.model_config["env_prefix"]
    delimiter = Settings.model_config["env_nested_delimiter"]
    assert prefix and delimiter
    model: type[BaseModel] = Settings
    parts = key.removeprefix(prefix).lower().split(delimiter)
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            nested = field.annotation
            if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
                return False
            model = nested
    return True


def _settings_for(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """`Settings` as a container with this environment builds them (or raises)."""
    prefix = Settings.model_config["env_prefix"]
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(prefix):
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings()


def restricted_violations(pod: Pod) -> list[str]:
    """Breaches of the Pod Security Standards "restricted" profile (plus a
    read-only root filesystem, which the issue asks for too)."""
    spec = pod.spec
    errors: list[str] = []
    pod_sc = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            errors.append(f"{key} is set")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            errors.append(f"volume {volume['name']} is {sorted(kinds)}")
    for sysctl in pod_sc.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            errors.append(f"unsafe sysctl {sysctl['name']}")
    for key, value in pod.annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and (
            value != "runtime/default" and not value.startswith("localhost/")
        ):
            errors.append(f"AppArmor annotation {key}={value}")

    def check_context(where: str, sc: dict[str, Any]) -> None:
        if sc.get("windowsOptions", {}).get("hostProcess"):
            errors.append(f"{where}: hostProcess")
        if sc.get("runAsUser") == 0:
            errors.append(f"{where}: runAsUser 0")
        if sc.get("runAsNonRoot") is False:
            errors.append(f"{where}: runAsNonRoot false")
        if sc.get("seccompProfile", {}).get("type") == "Unconfined":
            errors.append(f"{where}: seccomp Unconfined")
        if sc.get("appArmorProfile", {}).get("type") == "Unconfined":
            errors.append(f"{where}: AppArmor Unconfined")
        selinux = sc.get("seLinuxOptions", {})
        if selinux.get("type", "") not in SELINUX_TYPES or {"user", "role"} & set(
            selinux
        ):
            errors.append(f"{where}: seLinuxOptions {selinux}")

    check_context("pod", pod_sc)
    for container in pod.containers():
        where = f"container {container['name']}"
        sc = container.get("securityContext", {})
        check_context(where, sc)
        if sc.get("privileged"):
            errors.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{where}: allowPrivilegeEscalation is not false")
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            errors.append(f"{where}: runAsNonRoot is not true")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        if seccomp.get("type") not in {"RuntimeDefault", "Localhost"}:
            errors.append(f"{where}: seccompProfile is not RuntimeDefault/Localhost")
        capabilities = sc.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            errors.append(f"{where}: capabilities do not drop ALL")
        if not set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"}:
            errors.append(f"{where}: adds capabilities {capabilities['add']}")
        if sc.get("procMount", "Default") != "Default":
            errors.append(f"{where}: procMount {sc['procMount']}")
        if any(p.get("hostPort") for p in container.get("ports", [])):
            errors.append(f"{where}: hostPort")
        if sc.get("readOnlyRootFilesystem") is not True:
            errors.append(f"{where}: readOnlyRootFilesystem is not true")
    return errors


# --- rendering and schemas ---------------------------------------------------


def test_every_overlay_is_tested() -> None:
    overlays = {
        str(p.parent.relative_to(ROOT))
        for p in (K8S / "overlays").glob("*/kustomization.yaml")
    }
    assert overlays | {"k8s"} == set(KUSTOMIZATIONS)


def test_contract_and_optional_objects_exist(manifests: Manifests) -> None:
    present = {(o["kind"], o["metadata"]["name"]) for o in manifests.objects}
    replaced = REPLACED.get(manifests.kustomization, set())
    expected = (CONTRACT - replaced) | KUSTOMIZATIONS[manifests.kustomization]
    assert expected <= present, expected - present
    assert not replaced & present, replaced & present
    optional = set().union(*KUSTOMIZATIONS.values())
    assert not (optional - expected) & present, "optional parts leaked into it"


def test_crd_objects_are_the_expected_ones(manifests: Manifests) -> None:
    """The base needs only the Gateway API CRDs; KEDA's only where asked for.

    Any other kind without a Kubernetes schema fails the schema test below.
    """
    crd_objects = {
        (o["kind"], o["metadata"]["name"])
        for o in manifests.objects
        if o["kind"] in CRD_KINDS
    }
    expected = {("HTTPRoute", "churn-predictor")} | {
        (kind, name)
        for kind, name in KUSTOMIZATIONS[manifests.kustomization]
        if kind in CRD_KINDS
    }
    assert crd_objects == expected


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_builtin_kinds_match_kubernetes_schemas(
    manifests: Manifests, version: str
) -> None:
    errors = []
    for obj in manifests.objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kv_utils.SchemaNotFoundError:
            if obj["kind"] not in CRD_KINDS:
                errors.append(f"{name}: no schema for {obj['apiVersion']}")
        except kv_utils.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{name}: {path}: {exc.message}")
    assert not errors, "\n".join(errors)


def _crd_validator() -> list[str]:
    node = shutil.which("node")
    if node is None or not (K8S_VALIDATE / "node_modules").is_dir():
        pytest.fail(
            "validating the CRD kinds needs node and tools/k8s-validate's "
            "packages: make k8s-validate-deps"
        )
    return [node, str(K8S_VALIDATE / "validate.mjs")]


def test_crd_kinds_match_their_crd_schemas(manifests: Manifests) -> None:
    """Every object of a CRD kind, against its CRD's schema (kubernetes-models:
    types, enums, required fields, bounds; the API server prunes unknown
    fields of custom resources). A Rollout's pod template also passes the
    Deployment schema, strictly."""
    crd_objects = [o for o in manifests.objects if o["kind"] in CRD_KINDS]
    done = subprocess.run(
        _crd_validator(),
        input=json.dumps(crd_objects),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [r["kind"] for r in results] == [o["kind"] for o in crd_objects]
    errors = [f"{r['kind']}/{r['name']}: {r['errors']}" for r in results if r["errors"]]
    assert not errors, "\n".join(errors)
    for rollout in manifests.of_kind("Rollout"):
        as_deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": rollout["metadata"],
            "spec": {
                "selector": rollout["spec"]["selector"],
                "template": rollout["spec"]["template"],
            },
        }
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(as_deployment, version, strict=True)


def test_the_crd_validator_rejects_what_its_schemas_forbid() -> None:
    """The validator is not a no-op: one breach per kind fails."""
    broken = {
        "Rollout": ("spec.strategy.canary.steps.0.setWeight", "ten"),
        "AnalysisTemplate": ("spec.metrics.0.successCondition", 1),
        "HTTPRoute": ("spec.rules.0.backendRefs.0.weight", -1),
        "ScaledObject": ("spec.minReplicaCount", "one"),
    }
    objects = []
    for kustomization in (ARGO, "k8s/overlays/standalone-consumer-keda"):
        for obj in Manifests(kustomization).objects:
            seen = {o["kind"] for o in objects}
            if obj["kind"] in broken and obj["kind"] not in seen:
                obj = json.loads(json.dumps(obj))
                path, value = broken[obj["kind"]]
                *parents, last = path.split(".")
                node: Any = obj
                for key in parents:
                    node = node[int(key)] if key.isdigit() else node[key]
                node[int(last) if last.isdigit() else last] = value
                objects.append(obj)
    assert {o["kind"] for o in objects} == set(broken)
    done = subprocess.run(
        _crd_validator(),
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert all(r["errors"] for r in json.loads(done.stdout)), done.stdout


def test_namespaced_objects_live_in_predictflow(manifests: Manifests) -> None:
    misplaced = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in manifests.objects
        if o["kind"] not in CLUSTER_SCOPED
        and o["metadata"].get("namespace") != NAMESPACE
    ]
    assert not misplaced


# --- pod security and the container file system ------------------------------


def test_namespace_enforces_restricted(manifests: Manifests) -> None:
    labels = manifests.get("Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_pods_meet_restricted_pod_security(manifests: Manifests) -> None:
    errors = [
        f"{pod.name}: {error}"
        for pod in manifests.pods()
        for error in restricted_violations(pod)
    ]
    assert not errors, "\n".join(errors)


def test_pods_run_as_the_bento_user(manifests: Manifests) -> None:
    for pod in manifests.pods():
        sc = pod.spec["securityContext"]
        assert sc["runAsUser"] == BENTO_UID_GID, pod.name
        assert sc["runAsGroup"] == BENTO_UID_GID, pod.name


def test_runtime_writes_land_on_empty_dirs(manifests: Manifests) -> None:
    """With a read-only root, every path BentoML writes is an emptyDir, and no
    mount hides the Bento (its code and packed models) from the image."""
    bento = PurePosixPath(BENTO_PATH)
    for pod in manifests.pods():
        for container in pod.containers():
            where = f"{pod.name} {container['name']}"
            env = manifests.container_env(container)
            home = env.get("BENTOML_HOME", "")
            # The image's BENTOML_HOME contains the Bento: it must be moved.
            assert home and home.rstrip("/") != BENTO_HOME.rstrip("/"), where
            assert env.get("PYTHONDONTWRITEBYTECODE") == "1", where
            assert _writable(container, pod, CONTAINER_TMP), f"{where}: /tmp"
            for sub in BENTOML_STORE_DIRS:
                path = f"{home}/{sub}"
                # models/ may be the Bento's own (read-only) model store.
                packed = sub == "models" and PurePosixPath(home) == bento
                assert packed or _writable(container, pod, path), f"{where}: {path}"
            if pod.serves_http(container):
                path = f"{home}/{PROMETHEUS_DIR}"
                assert _writable(container, pod, path), f"{where}: {path}"
            for mount in container.get("volumeMounts", []):
                target = PurePosixPath(mount["mountPath"])
                for needed in (bento / "src", bento / "models", bento / "env"):
                    assert not needed.is_relative_to(target), f"{where}: {target}"


# --- probes, rollouts, scaling -----------------------------------------------


def test_http_probes_use_readyz_and_livez(manifests: Manifests) -> None:
    http_pods = 0
    for pod in manifests.pods():
        for container in pod.spec["containers"]:
            where = f"{pod.name} {container['name']}"
            if pod.serves_http(container):
                http_pods += 1
                ready = container["readinessProbe"]["httpGet"]
                live = container["livenessProbe"]["httpGet"]
                assert (ready["path"], ready["port"]) == ("/readyz", "http"), where
                assert (live["path"], live["port"]) == ("/livez", "http"), where
                if "startupProbe" in container:
                    start = container["startupProbe"]["httpGet"]
                    assert (start["path"], start["port"]) == ("/livez", "http")
            else:
                for probe in ("readinessProbe", "livenessProbe"):
                    (handler,) = set(container[probe]) & PROBE_HANDLERS
                    port = container[probe][handler]["port"]
                    assert _port_number(container, port) is not None, where
    assert http_pods >= 2


def test_rollouts_never_drop_capacity(manifests: Manifests) -> None:
    for deployment in manifests.of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        strategy = deployment["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate", name
        assert strategy["rollingUpdate"]["maxUnavailable"] in (0, "0%"), name
        assert strategy["rollingUpdate"]["maxSurge"] == 1, name


def test_http_pods_drain_before_sigterm(manifests: Manifests) -> None:
    for pod in manifests.pods():
        for container in pod.spec["containers"]:
            if not pod.serves_http(container):
                continue
            pre_stop = container["lifecycle"]["preStop"]
            if "sleep" in pre_stop:
                seconds = int(pre_stop["sleep"]["seconds"])
            else:
                command = pre_stop["exec"]["command"]
                assert command[0] == "sleep", pod.name
                seconds = int(command[1])
            assert seconds >= PRESTOP_SECONDS_MIN, pod.name
            assert pod.spec["terminationGracePeriodSeconds"] > seconds, pod.name


def test_stable_hpa_scales_on_cpu(manifests: Manifests) -> None:
    hpa = manifests.get("HorizontalPodAutoscaler", "churn-predictor")["spec"]
    if manifests.kustomization in REPLACED:
        # Argo splits the Rollout's replicas between the sides by weight; 10
        # to 20 pods keep 10/30/50 % whole pods (test_argo_rollouts_*).
        target = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout"}
        bounds = (10, 20)
    else:
        target, bounds = {"apiVersion": "apps/v1", "kind": "Deployment"}, (2, 10)
    assert hpa["scaleTargetRef"] == target | {"name": "churn-predictor"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == bounds
    assert hpa["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        }
    ]


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(
    manifests: Manifests,
) -> None:
    targets = [
        hpa["spec"]["scaleTargetRef"]
        for hpa in manifests.of_kind("HorizontalPodAutoscaler")
    ] + [so["spec"]["scaleTargetRef"] for so in manifests.of_kind("ScaledObject")]
    assert targets
    for target in targets:
        name = target["name"]
        deployment = manifests.get(target.get("kind", "Deployment"), name)
        assert "replicas" not in deployment["spec"], name
        assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"][
            "requests"
        ]["cpu"], name


@pytest.mark.parametrize("kustomization", WITH_DEPLOYMENTS)
def test_canary_starts_empty(kustomization: str) -> None:
    manifests = Manifests(kustomization)
    canary = manifests.get("Deployment", "churn-predictor-canary")
    assert canary["spec"]["replicas"] == 0
    assert canary["spec"]["template"]["metadata"]["labels"]["track"] == "canary"
    stable = manifests.get("Deployment", "churn-predictor")
    assert stable["spec"]["template"]["metadata"]["labels"]["track"] == "stable"


def test_pdbs_cover_running_pods(manifests: Manifests) -> None:
    for pdb in manifests.of_kind("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert manifests.pods_selected_by(selector), pdb["metadata"]["name"]
    for pod in manifests.pods():
        if pod.owner["spec"].get("replicas") == 0:
            continue
        assert any(
            pdb["spec"]["selector"]["matchLabels"].items() <= pod.labels.items()
            for pdb in manifests.of_kind("PodDisruptionBudget")
        ), pod.name


# --- services, routing, network ----------------------------------------------


def test_services_select_pods_and_their_ports(manifests: Manifests) -> None:
    for service in manifests.of_kind("Service"):
        name = service["metadata"]["name"]
        selector = service["spec"]["selector"]
        pods = manifests.pods_selected_by(selector)
        assert selector and pods, name
        for port in service["spec"]["ports"]:
            for pod in pods:
                assert any(
                    _port_number(c, port["targetPort"]) is not None
                    for c in pod.spec["containers"]
                ), f"{name} -> {pod.name}: {port['targetPort']}"
    if manifests.kustomization in REPLACED:
        # Argo adds each side's pod-template hash to these two selectors.
        canary = manifests.get(*ROLLOUT)["spec"]["strategy"]["canary"]
        assert canary["stableService"] == "churn-predictor-stable"
        assert canary["canaryService"] == "churn-predictor-canary"
        return
    tracks = {
        name: {
            p.labels["track"]
            for p in manifests.pods_selected_by(
                manifests.get("Service", name)["spec"]["selector"]
            )
        }
        for name in (
            "churn-predictor",
            "churn-predictor-stable",
            "churn-predictor-canary",
        )
    }
    assert tracks == {
        "churn-predictor": {"stable", "canary"},
        "churn-predictor-stable": {"stable"},
        "churn-predictor-canary": {"canary"},
    }
    for pod in manifests.pods_selected_by(
        manifests.get("Service", "churn-predictor")["spec"]["selector"]
    ):
        assert pod.owner["metadata"]["name"].startswith("churn-predictor"), pod.name


def test_httproute_splits_rest_traffic_by_weight(manifests: Manifests) -> None:
    """What the canary paths rely on (its schema: test_crd_kinds_match_*)."""
    route = manifests.get("HTTPRoute", "churn-predictor")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    spec = route["spec"]
    assert len(spec["parentRefs"]) == 1
    parent = spec["parentRefs"][0]
    assert parent["name"] == "predictflow-gateway"
    assert parent.get("group", "gateway.networking.k8s.io") == (
        "gateway.networking.k8s.io"
    )
    assert parent.get("kind", "Gateway") == "Gateway"
    assert len(spec["rules"]) == 1, "canary_promote.py edits the one rule"
    rule = spec["rules"][0]
    for match in rule["matches"]:
        assert match["path"]["type"] in {"Exact", "PathPrefix", "RegularExpression"}
        assert match["path"]["value"].startswith("/")
    paths = {m["path"]["value"] for m in rule["matches"]}
    assert paths == {"/predict", "/predict_batch"}
    weights = {}
    for ref in rule["backendRefs"]:
        assert ref.get("kind", "Service") == "Service"
        assert ref.get("group", "") == ""
        service = manifests.get("Service", ref["name"])
        assert ref["port"] in {p["port"] for p in service["spec"]["ports"]}
        assert isinstance(ref["weight"], int) and 0 <= ref["weight"] <= 1_000_000
        weights[ref["name"]] = ref["weight"]
    assert weights == {"churn-predictor-stable": 100, "churn-predictor-canary": 0}
    assert sum(weights.values()) == 100


def test_network_policies_allow_only_what_is_needed(manifests: Manifests) -> None:
    policies = manifests.of_kind("NetworkPolicy")
    for policy in policies:
        name = policy["metadata"]["name"]
        egress = policy["spec"].get("egress", [])
        for rule in egress + policy["spec"].get("ingress", []):
            assert rule.get("ports"), f"{name}: a rule without ports allows all"
        if egress:
            ports = [p for rule in egress for p in rule["ports"]]
            assert {p["port"] for p in ports} == EGRESS_PORTS, name
            dns = {p.get("protocol", "TCP") for p in ports if p["port"] == 53}
            assert dns == {"UDP", "TCP"}, name
    for pod in manifests.pods():
        selecting = [
            p
            for p in policies
            if p["spec"]["podSelector"].get("matchLabels", {}).items()
            <= pod.labels.items()
        ]
        types = {t for p in selecting for t in p["spec"]["policyTypes"]}
        assert types == {"Ingress", "Egress"}, pod.name
        open_ports = {
            port["port"]
            for p in selecting
            for rule in p["spec"].get("ingress", [])
            for port in rule["ports"]
        }
        served = {
            p["containerPort"]
            for c in pod.spec["containers"]
            for p in c.get("ports", [])
            if p.get("name") in {"http", "metrics"}
        }
        assert open_ports == served, pod.name


def test_pods_are_scraped_with_a_track(manifests: Manifests) -> None:
    for pod in manifests.pods():
        notes = pod.annotations
        assert notes["prometheus.io/scrape"] == "true", pod.name
        assert notes["prometheus.io/path"] == "/metrics", pod.name
        ports = {
            p["containerPort"] for c in pod.containers() for p in c.get("ports", [])
        }
        assert int(notes["prometheus.io/port"]) in ports, pod.name
        assert pod.labels["track"] in {"stable", "canary"}, pod.name


# --- settings ----------------------------------------------------------------


def test_env_keys_are_settings(manifests: Manifests) -> None:
    prefix = Settings.model_config["env_prefix"]
    keys = {k for c in manifests.of_kind("ConfigMap") for k in c["data"]}
    assert all(k.startswith(prefix) for k in keys), keys
    for pod in manifests.pods():
        for container in pod.containers():
            keys |= {
                v["name"]
                for v in container.get("env", [])
                if v["name"].startswith(prefix)
            }
    unknown = sorted(k for k in keys if not _setting_field(k))
    assert not unknown, f"not fields of predictflow.settings.Settings: {unknown}"


def test_containers_get_valid_production_settings(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_of_image: dict[str, str] = {}
    for pod in manifests.pods():
        for container in pod.containers():
            env = manifests.container_env(container)
            settings = _settings_for(env, monkeypatch)
            assert settings.environment == "production"
            assert settings.feast.online_store == "redis"
            assert settings.kafka.bootstrap_servers
            for port in container.get("ports", []):
                if port["name"] == "metrics":
                    assert settings.kafka.metrics_port == port["containerPort"]
            # service.py packs one model per image (the tag at `bentoml build`):
            # two pods on one image must ask for the same model.
            image = container["image"]
            assert image.startswith("predictflow/churn-predictor:"), image
            tag = settings.serving.model_tag
            assert model_of_image.setdefault(image, tag) == tag, (image, tag)


def test_tracks_follow_their_own_alias_in_one_registry(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stable pods (and the consumer) follow `champion`, canary pods the
    `challenger` canary_promote.py promotes; all in the same MLflow server,
    with a writable place for the versions they download."""
    assert ALIAS_OF["churn-predictor-canary"] == CHALLENGER
    shared = set(manifests.get("ConfigMap", "churn-predictor-config")["data"])
    registries = set()
    for pod in manifests.pods():
        name = pod.owner["metadata"]["name"]
        for container in pod.containers():
            # Each pod's alias comes from its track's ConfigMap alone, so
            # the order of `envFrom` never decides it.
            refs = [s["configMapRef"]["name"] for s in container["envFrom"]]
            own = [r for r in refs if r != "churn-predictor-config"]
            (track_config,) = own
            keys = set(manifests.get("ConfigMap", track_config)["data"])
            assert not keys & shared, (name, keys & shared)
            settings = _settings_for(manifests.container_env(container), monkeypatch)
            assert settings.model.alias == ALIAS_OF[name], name
            assert settings.model.refresh_seconds > 0, name
            uri = settings.mlflow.tracking_uri
            assert uri and uri.startswith(("http://", "https://")), (name, uri)
            registries.add(uri)
            assert _writable(container, pod, str(settings.data_dir)), name
    assert len(registries) == 1, registries


@pytest.mark.parametrize("kustomization", WITH_DEPLOYMENTS)
def test_promoting_the_canary_template_keeps_stable_on_champion(
    kustomization: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What canary_promote.py patches into stable at 100 %: the canary's pod
    template with the stable track and alias. The canary is made from stable
    (k8s/base/kustomization.yaml), so that is stable's own template, spread
    included: stable pods are not rolled."""
    manifests = Manifests(kustomization)
    names = Names()
    canary = manifests.get("Deployment", names.canary)["spec"]["template"]
    stable = manifests.get("Deployment", names.stable)["spec"]["template"]
    promoted = names.stable_template(canary)
    assert canary["metadata"]["labels"]["track"] == "canary"  # not mutated
    (spread,) = canary["spec"]["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"]["track"] == "canary"
    (container,) = promoted["spec"]["containers"]
    settings = _settings_for(manifests.container_env(container), monkeypatch)
    assert settings.model.alias == ALIAS_OF[names.stable]
    assert promoted == stable


def test_kafka_logins_come_from_a_secret(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every container that runs the Kafka runner logs in over SASL_SSL: the
    login from the Secret as env vars, the CA from it as a read-only file;
    no ConfigMap or literal value holds a credential."""
    for configmap in manifests.of_kind("ConfigMap"):
        for key in configmap.get("data", {}):
            assert not key.endswith(tuple(KAFKA_SECRET_ENV)), key
    runners = 0
    for pod in manifests.pods():
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        for container in pod.containers():
            env = manifests.container_env(container)
            settings = _settings_for(env, monkeypatch)
            if not settings.kafka.bootstrap_servers:
                continue
            runners += 1
            where = f"{pod.name} {container['name']}"
            assert settings.kafka.security_protocol == "SASL_SSL", where
            refs = {
                v["name"]: v["valueFrom"]["secretKeyRef"]
                for v in container.get("env", [])
                if "valueFrom" in v
            }
            for name, key in KAFKA_SECRET_ENV.items():
                assert refs.get(name) == {"name": KAFKA_SECRET, "key": key}, where
            cafile = settings.kafka.ssl_cafile
            assert cafile is not None, where
            cafile_path = PurePosixPath(str(cafile))
            (mount,) = [
                m
                for m in container.get("volumeMounts", [])
                if PurePosixPath(m["mountPath"]) == cafile_path.parent
            ]
            assert mount.get("readOnly") is True, where
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"] == KAFKA_SECRET, where
            # Only the CA becomes a file: the password stays out of the pod's
            # file system.
            assert secret["items"] == [
                {"key": KAFKA_SECRET_CA, "path": cafile_path.name}
            ], where
            assert not settings.kafka.create_topics, f"{where}: topics are ops'"
    # The stable and canary pods run the runner; so does the consumer.
    expected = 2 + (CONSUMER in KUSTOMIZATIONS[manifests.kustomization])
    assert runners == expected


@pytest.mark.parametrize("kustomization", WITH_CONSUMER)
def test_standalone_consumer_runs_the_stable_model(kustomization: str) -> None:
    manifests = Manifests(kustomization)
    consumer = manifests.get(*CONSUMER)
    stable = manifests.get("Deployment", "churn-predictor")
    container = consumer["spec"]["template"]["spec"]["containers"][0]
    stable_container = stable["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == stable_container["image"]
    assert container["args"] == ["python", "-m", "consumers"]
    assert container["workingDir"] == f"{BENTO_PATH}/src"
    # bentoml.models.get reads $BENTOML_HOME/models: the Bento's packed models.
    assert manifests.container_env(container)["BENTOML_HOME"] == BENTO_PATH
    key = "PREDICTFLOW_SERVING__MODEL_TAG"
    assert (
        manifests.container_env(container)[key]
        == manifests.container_env(stable_container)[key]
    )


@pytest.mark.parametrize("kustomization", WITH_KEDA)
def test_keda_scales_the_consumer_on_its_group_lag(
    kustomization: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What scaling on lag relies on (its schema: test_crd_kinds_match_*)."""
    manifests = Manifests(kustomization)
    scaled = manifests.get(*SCALED_CONSUMER)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    deployment = manifests.get("Deployment", target["name"])
    containers = deployment["spec"]["template"]["spec"]["containers"]
    container = next(
        c
        for c in containers
        if c["name"] == target.get("envSourceContainerName", containers[0]["name"])
    )
    env = manifests.container_env(container)
    settings = _settings_for(env, monkeypatch)
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["maxReplicaCount"] <= settings.kafka.request_partitions
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert set(metadata) <= KAFKA_SCALER_KEYS, metadata.keys()
    assert all(isinstance(v, str) for v in metadata.values()), "metadata are strings"
    assert env[metadata["bootstrapServersFromEnv"]] == settings.kafka.bootstrap_servers
    assert metadata["consumerGroup"] == settings.kafka.group_id
    assert metadata["topic"] == settings.kafka.request_topic
    assert int(metadata["lagThreshold"]) > 0
    # KEDA reads the lag over the same TLS and login as the consumer.
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert metadata["tls"] == "enable"
    assert metadata["sasl"] == KEDA_SASL[settings.kafka.sasl_mechanism]
    auth = manifests.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    refs = auth["spec"]["secretTargetRef"]
    for ref in refs:
        assert ref["name"] == KAFKA_SECRET, ref
    assert {r["parameter"]: r["key"] for r in refs} == {
        **KEDA_KAFKA_PARAMETERS,
        "ca": KAFKA_SECRET_CA,
    }
