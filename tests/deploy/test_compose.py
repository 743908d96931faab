"""docker-compose.yml without a Docker engine: the Compose Specification, and the code.

The schema is the Compose Specification's own JSON schema as vendored by the
`check-jsonschema` package (a dev dependency), so nothing is fetched at test
time. Everything else is read from the code it must agree with: settings from
`predictflow.settings.Settings`, metric names from `predictflow.metrics`,
BentoML's port and metric namespace from its default configuration, versions
from the installed MLflow and `scripts/kafka/pom.xml`.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from predictflow.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "predictflow.json"

SERVICE = "churn-predictor"
KAFKA = "kafka"
REDIS = "redis"
MLFLOW = "mlflow"
PROMETHEUS = "prometheus"
GRAFANA_SERVICE = "grafana"
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|API_KEY|PRIVATE_KEY", re.I)
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error},
# ${NAME:+alt}, ${NAME+alt}, $NAME; `$$` is a literal dollar.
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# --- reading the files ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reference:
    """One `${...}` in docker-compose.yml, and where it is (keys from the root)."""

    name: str
    op: str | None
    arg: str
    path: tuple[str, ...]


@cache
def raw_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@cache
def env_example() -> dict[str, str]:
    """`.env.example` as docker compose reads `.env` (KEY=VALUE, # comments)."""
    values: dict[str, str] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), (
            f".env.example line {number} is not KEY=VALUE: {line!r}"
        )
        assert "#" not in value and not value.startswith(("'", '"')), (
            f".env.example line {number}: keep values plain (no quotes, no "
            "trailing comment), so every .env reader agrees on them"
        )
        assert key not in values, f".env.example sets {key} twice"
        values[key] = value
    return values


def interpolate_string(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation of one string."""

    def one(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["name"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        value = env.get(name)
        # With a colon, an empty value counts as unset.
        present = bool(value) if op and op.startswith(":") else value is not None
        if op in (":-", "-"):
            return value if present and value is not None else arg
        if op in (":?", "?"):
            if not present:
                raise LookupError(f"{name}: {arg}")
            return value or ""
        if op in (":+", "+"):
            return arg if present else ""
        return value or ""

    return INTERPOLATION.sub(one, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_string(node, env)
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    return node


def references(node: Any, path: tuple[str, ...] = ()) -> Iterator[Reference]:
    if isinstance(node, str):
        for m in INTERPOLATION.finditer(node):
            if not m["escaped"]:
                name = m["name"] or m["bare"]
                yield Reference(name, m["op"], m["arg"] or "", path)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from references(item, (*path, str(i)))
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from references(value, (*path, str(key)))


@cache
def compose() -> dict[str, Any]:
    """docker-compose.yml as compose runs it with `cp .env.example .env`."""
    data = interpolate(raw_compose(), env_example())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def environment(service: str) -> dict[str, str]:
    env = services()[service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def published_ports(service: str) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each short-syntax port."""
    found = []
    for spec in services()[service].get("ports", []):
        assert isinstance(spec, str), f"{service}: use the short port syntax"
        *ip, host, container = spec.split("/")[0].split(":")
        found.append((":".join(ip), int(host), int(container)))
    return found


def mounts(service: str) -> dict[str, str]:
    """Container path -> source (a named volume or a ./ path) of short mounts."""
    found = {}
    for spec in services()[service].get("volumes", []):
        assert isinstance(spec, str), f"{service}: use the short volume syntax"
        source, target, *_ = spec.split(":")
        found[target] = source
    return found


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def one_shot_jobs() -> set[str]:
    return {
        name
        for svc in services().values()
        for name, dep in (svc.get("depends_on") or {}).items()
        if isinstance(dep, dict)
        and dep.get("condition") == "service_completed_successfully"
    }


@cache
def compose_schema() -> dict[str, Any]:
    """The Compose Specification schema that check-jsonschema vendors."""
    relative = "check_jsonschema/builtin_schemas/vendor/compose-spec.json"
    try:
        dist = importlib.metadata.distribution("check-jsonschema")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            "check-jsonschema is not installed: it ships the Compose "
            "Specification schema (pip install check-jsonschema, a dev dependency)"
        )
    schema = json.loads(Path(str(dist.locate_file(relative))).read_text())
    assert isinstance(schema, dict)
    return schema


def validation_errors(document: Any) -> list[str]:
    from jsonschema.validators import validator_for

    schema = compose_schema()
    cls = validator_for(schema)
    cls.check_schema(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in cls(schema).iter_errors(document)
    ]


@cache
def bentoml_defaults() -> dict[str, Any]:
    """BentoML's default configuration (port, metrics namespace), not imported."""
    path = "bentoml/_internal/configuration/v2/default_configuration.yaml"
    located = importlib.metadata.distribution("bentoml").locate_file(path)
    data = yaml.safe_load(Path(str(located)).read_text())
    assert isinstance(data, dict)
    return data


def bento_service_options() -> dict[str, ast.expr]:
    """The keyword arguments of `@bentoml.service(...)` in service.py."""
    tree = ast.parse((ROOT / "service.py").read_text())
    (call,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "bentoml.service"
    ]
    return {kw.arg: kw.value for kw in call.keywords if kw.arg is not None}


def settings_field(variable: str) -> str | None:
    """Why `PREDICTFLOW_A__B` is not a Settings field, or None when it is one."""
    parts = variable.removeprefix("PREDICTFLOW_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return f"{model.__name__} has no field {part!r}"
        nested = isinstance(field.annotation, type) and issubclass(
            field.annotation, BaseModel
        )
        if i < len(parts) - 1:
            if not nested:
                return f"{model.__name__}.{part} has no nested fields"
            assert isinstance(field.annotation, type)
            model = field.annotation
        elif nested:
            return f"{model.__name__}.{part} is a group: name one of its fields"
    return None


def settings_of(service: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a container of `service` builds from its environment."""
    for name in list(os.environ):
        if name.startswith("PREDICTFLOW_") or name == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(name)
    for name, value in environment(service).items():
        if name.startswith("PREDICTFLOW_") or name == "MLFLOW_TRACKING_URI":
            monkeypatch.setenv(name, value)
    return Settings()


_NOT_METRICS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "and", "or", "unless", "inf", "nan",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, labels or keywords)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s
    )
    names = set()
    for m in re.finditer(r"(?<![\w:.])[A-Za-z_:][\w:]*", s):
        if s[m.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group().lower() not in _NOT_METRICS:
            names.add(m.group())
    return names


@cache
def predictflow_metrics() -> dict[str, set[str]]:
    """Each PredictFlow metric family -> the sample names it exposes."""
    from predictflow import metrics

    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
    }
    found: dict[str, set[str]] = {}
    everything = metrics.get()
    for field in dataclasses.fields(everything):
        for family in getattr(everything, field.name).describe():
            found[family.name] = {family.name + s for s in suffixes[family.type]}
    return found


def dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item)


# --- the Compose Specification -------------------------------------------------


def test_compose_file_is_valid_under_the_compose_specification() -> None:
    schema = compose_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert validation_errors(raw_compose()) == []
    # As compose sees it after reading .env: ports and tags are plain values.
    assert validation_errors(compose()) == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["services"][SERVICE].update(helthcheck={"test": ["NONE"]}),
        lambda d: d["services"][SERVICE]["depends_on"][REDIS].update(
            condition="service_ready"
        ),
        lambda d: d["services"][REDIS]["healthcheck"].update(interval=5),
        lambda d: d.update(service={}),
    ],
    ids=["unknown-key", "bad-condition", "wrong-type", "unknown-top-level"],
)
def test_schema_check_catches_mistakes(breakage: Any) -> None:
    broken = copy.deepcopy(compose())
    breakage(broken)
    assert validation_errors(broken)


# --- variables: .env.example, interpolation, Settings --------------------------


def test_every_variable_has_a_safe_default_or_fails_loudly() -> None:
    env = env_example()
    for ref in references(raw_compose()):
        where = ".".join(ref.path)
        assert ref.op in (":-", ":?"), (
            f"{where}: ${{{ref.name}}} needs a default (:-) or an error (:?)"
        )
        assert ref.name in env, f"{where}: document {ref.name} in .env.example"
        if ref.op == ":-":
            assert ref.arg == env[ref.name], (
                f"{where}: default of {ref.name} is {ref.arg!r}, .env.example "
                f"says {env[ref.name]!r}"
            )


def test_env_example_has_no_unused_variables() -> None:
    used = {ref.name for ref in references(raw_compose())}
    assert set(env_example()) - used == set()


#: The secrets without a default: compose refuses to start until they exist.
REQUIRED_SECRETS = {
    "GRAFANA_ADMIN_PASSWORD",
    "REDIS_PASSWORD",
    "KAFKA_ADMIN_PASSWORD",
    "KAFKA_PREDICTFLOW_PASSWORD",
    "KAFKA_REQUESTER_PASSWORD",
}


def test_compose_fails_without_an_env_file() -> None:
    with pytest.raises(LookupError, match="make compose-secrets"):
        interpolate(raw_compose(), {})
    required = {ref.name for ref in references(raw_compose()) if ref.op == ":?"}
    assert required == REQUIRED_SECRETS
    assert all(SECRET_KEY.search(name) for name in required)


def test_predictflow_variables_are_settings_fields() -> None:
    refs = list(references(raw_compose()))
    image_only = {
        ref.name
        for ref in refs
        if ref.path[-1] == "image" and ref.path[0] == "services"
    } - {ref.name for ref in refs if ref.path[-1] != "image"}
    names = {ref.name for ref in refs} | set(env_example())
    for svc in services():
        names |= set(environment(svc))
    names = {n for n in names if n.startswith("PREDICTFLOW_")} - image_only
    assert "PREDICTFLOW_IMAGE" in image_only
    assert names, "no PREDICTFLOW_ variables found"
    problems = {n: why for n in sorted(names) if (why := settings_field(n))}
    assert problems == {}


def test_settings_field_lookup_rejects_near_misses() -> None:
    assert settings_field("PREDICTFLOW_FEAST__ONLINE_STORE") is None
    assert settings_field("PREDICTFLOW_DATA_DIR") is None
    assert settings_field("PREDICTFLOW_FEAST_ONLINE_STORE") is not None
    assert settings_field("PREDICTFLOW_FEAST__ONLINE_STOR") is not None
    assert settings_field("PREDICTFLOW_KAFKA") is not None
    assert settings_field("PREDICTFLOW_LOG_LEVEL__X") is not None


@pytest.mark.parametrize("service", ["bootstrap", SERVICE])
def test_containers_build_valid_settings_wired_to_the_stack(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_of(service, monkeypatch)
    assert settings.feast.online_store == "redis"
    host, port = host_port(
        settings.feast.redis_connection_string.get_secret_value().split(",")[0]
    )
    assert (host, port) == (REDIS, 6379)
    assert REDIS in services()
    command = services()[REDIS].get("command") or []
    assert "--port" not in command, "redis listens on 6379, as the settings say"
    # Both containers see the Feast registry on the shared volume.
    data_dir = str(PurePosixPath(settings.feast.repo_path) / "data")
    assert mounts(service).get(data_dir) == "feast-data"


def test_bootstrap_tracks_to_the_mlflow_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_of("bootstrap", monkeypatch)
    url = urlsplit(settings.tracking_uri)
    command = services()[MLFLOW]["command"]
    port = int(command[command.index("--port") + 1])
    assert (url.scheme, url.hostname, url.port) == ("http", MLFLOW, port)
    allowed = command[command.index("--allowed-hosts") + 1].split(",")
    assert f"{MLFLOW}:{port}" in allowed, "MLflow 3 rejects other Host headers"


def test_service_and_bootstrap_share_the_bento_model_store() -> None:
    bento_models = "/home/bentoml/bento/models"  # the bento's own model store
    assert mounts(SERVICE).get(bento_models) == "bento-models"
    assert mounts("bootstrap").get(bento_models) == "bento-models"
    home = environment("bootstrap")["BENTOML_HOME"]
    assert str(PurePosixPath(home) / "models") == bento_models
    working_dir = PurePosixPath(services()["bootstrap"]["working_dir"])
    feast_repo = PurePosixPath(environment("bootstrap")["PREDICTFLOW_FEAST__REPO_PATH"])
    assert feast_repo == working_dir / "feature_repo", "PROJECT_ROOT is the cwd"
    assert services()["bootstrap"]["command"][:3] == ["python", "-m", "predictflow.cli"]


def test_service_consumes_from_the_kafka_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_of(SERVICE, monkeypatch)
    assert settings.kafka.bootstrap_servers is not None
    env = environment(KAFKA)
    advertised = {
        name: host_port(address.removeprefix("//"))
        for name, _, address in (
            item.partition(":") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        )
    }
    inside = advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert inside[0] == KAFKA == services()[KAFKA]["hostname"]
    assert [host_port(b) for b in settings.kafka.bootstrap_servers.split(",")] == [
        inside
    ]


def test_kafka_listeners_are_consistent() -> None:
    env = environment(KAFKA)
    listeners = {
        name: host_port(address.removeprefix("//"))[1]
        for name, _, address in (
            item.partition(":") for item in env["KAFKA_LISTENERS"].split(",")
        )
    }
    advertised = {
        name: host_port(address.removeprefix("//"))
        for name, _, address in (
            item.partition(":") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        )
    }
    protocols = dict(
        item.split(":")
        for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert set(listeners) == set(protocols)
    assert set(advertised) == set(listeners) - {controller}
    for name, (_, port) in advertised.items():
        assert listeners[name] == port, f"{name} advertises another port"
    node, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert node == env["KAFKA_NODE_ID"]
    assert host_port(voter) == (KAFKA, listeners[controller])
    # Host clients get the advertised address: it must be published as is.
    for name, (host, port) in advertised.items():
        if host in ("localhost", "127.0.0.1"):
            assert ("127.0.0.1", port, port) in published_ports(KAFKA), name
    for key in env:
        if key.endswith("REPLICATION_FACTOR") or key.endswith("MIN_ISR"):
            assert env[key] == "1", f"{key}: a single broker"


# --- images, ports, healthchecks, dependencies ---------------------------------


def test_images_are_consistent_with_the_code() -> None:
    image = {name: svc["image"] for name, svc in services().items()}
    assert image[SERVICE] == image["bootstrap"], "bootstrap runs the service image"
    assert raw_compose()["services"][SERVICE]["image"].startswith(
        "${PREDICTFLOW_IMAGE:-"
    )
    bento_name = ast.literal_eval(bento_service_options()["name"])
    repository = image[SERVICE].rsplit(":", 1)[0]
    assert repository.rsplit("/", 1)[-1] == bento_name, "bentoml containerize's name"

    mlflow_version = importlib.metadata.version("mlflow")
    assert image[MLFLOW] == f"ghcr.io/mlflow/mlflow:v{mlflow_version}"

    pom = (ROOT / "scripts" / "kafka" / "pom.xml").read_text()
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert found is not None
    # The broker of `make kafka-up` and the integration tests, exactly.
    assert image[KAFKA] == f"apache/kafka:{found.group(1)}"

    for name, ref in image.items():
        if name not in (SERVICE, "bootstrap"):
            tag = ref.rpartition(":")[2]
            assert tag and tag != "latest" and "/" not in tag, f"{name}: pin {ref}"


def test_every_serve_keeps_idle_connections_as_long() -> None:
    # The image's default arguments (compose and Kubernetes give it no
    # command), `make serve`, and the tests' and the benchmark's servers.
    from devtools.processes import KEEP_ALIVE_S

    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    template = (ROOT / bentofile["docker"]["dockerfile_template"]).read_text()
    assert f'CMD ["--timeout-keep-alive", "{KEEP_ALIVE_S}"]' in template
    makefile = (ROOT / "Makefile").read_text()
    assert f"KEEP_ALIVE_S ?= {KEEP_ALIVE_S}\n" in makefile
    assert "--timeout-keep-alive $(KEEP_ALIVE_S)" in makefile


def test_service_publishes_the_bentoml_port() -> None:
    port = bentoml_defaults()["services"]["http"]["port"]
    assert "http" not in bento_service_options(), "service.py overrides the port"
    assert {c for _, _, c in published_ports(SERVICE)} == {port}
    assert not {"PORT", "BENTOML_PORT"} & set(environment(SERVICE))
    assert "command" not in services()[SERVICE], "the image runs `bentoml serve`"
    test = " ".join(services()[SERVICE]["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in test


def test_published_ports_bind_to_localhost_only() -> None:
    published = [
        (name, ip) for name in services() for ip, _, _ in published_ports(name)
    ]
    assert published
    assert all(ip == "127.0.0.1" for _, ip in published), published
    host_ports = [p for name in services() for _, p, _ in published_ports(name)]
    assert len(host_ports) == len(set(host_ports)), "two services on one host port"


def test_every_long_running_service_has_a_healthcheck() -> None:
    jobs = one_shot_jobs()
    assert jobs == {"bootstrap"}
    for name, svc in services().items():
        if name in jobs:
            assert "healthcheck" not in svc, f"{name} exits: nothing to check"
            assert svc.get("restart") == "no", f"{name} must not restart"
        else:
            check = svc.get("healthcheck", {})
            assert check.get("test") and not check.get("disable"), name
            assert check["test"][0] in ("CMD", "CMD-SHELL"), name
            assert svc.get("restart") == "unless-stopped", name


def test_dependencies_exist_and_wait_for_a_condition() -> None:
    jobs = one_shot_jobs()
    for name, svc in services().items():
        depends = svc.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for target, dep in depends.items():
            assert target in services(), f"{name} depends on unknown {target}"
            condition = dep["condition"]
            if target in jobs:
                assert condition == "service_completed_successfully"
            else:
                assert condition == "service_healthy", f"{name} -> {target}"
                assert "healthcheck" in services()[target]
    wanted = {
        "bootstrap": {MLFLOW, REDIS},
        SERVICE: {"bootstrap", REDIS, KAFKA},
        GRAFANA_SERVICE: {PROMETHEUS},
    }
    for name, targets in wanted.items():
        assert set(services()[name]["depends_on"]) == targets, name


def test_mounts_exist_and_volumes_are_declared() -> None:
    declared = set(compose().get("volumes") or {})
    used = set()
    for name in services():
        for target, source in mounts(name).items():
            assert target.startswith("/"), f"{name}: {target}"
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"
            else:
                used.add(source)
    assert used == declared


# --- Prometheus and Grafana ----------------------------------------------------


def prometheus_config() -> dict[str, Any]:
    data = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert isinstance(data, dict)
    return data


def test_prometheus_scrapes_the_service_as_the_stable_track() -> None:
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    job = jobs[SERVICE]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    port = bentoml_defaults()["services"]["http"]["port"]
    (static,) = job["static_configs"]
    assert static["targets"] == [f"{SERVICE}:{port}"]
    assert static["labels"] == {"track": "stable"}
    assert {c for _, _, c in published_ports(SERVICE)} == {port}


def test_prometheus_reads_this_config() -> None:
    command = services()[PROMETHEUS]["command"]
    (config,) = [c.split("=", 1)[1] for c in command if c.startswith("--config.file=")]
    assert mounts(PROMETHEUS)[config] == "./deploy/prometheus/prometheus.yml"
    assert (ROOT / "deploy/prometheus/prometheus.yml") == PROMETHEUS_CONFIG


def test_promtool_accepts_the_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        # make test installs it (scripts/ensure-test-services.sh): never skip.
        pytest.fail("promtool is missing (apt-get install prometheus)")
    result = subprocess.run(  # noqa: S603 - our own file, a fixed tool
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def grafana_yaml(relative: str) -> dict[str, Any]:
    data = yaml.safe_load((GRAFANA / "provisioning" / relative).read_text())
    assert isinstance(data, dict)
    return data


def test_grafana_is_provisioned_from_the_repository() -> None:
    volumes = mounts(GRAFANA_SERVICE)
    assert volumes["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    (datasource,) = grafana_yaml("datasources/prometheus.yml")["datasources"]
    url = urlsplit(datasource["url"])
    assert (url.hostname, url.port) == (PROMETHEUS, 9090)
    assert {c for _, _, c in published_ports(PROMETHEUS)} == {9090}
    interval = prometheus_config()["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == interval
    (provider,) = grafana_yaml("dashboards/predictflow.yml")["providers"]
    path = provider["options"]["path"]
    assert volumes[path] == "./deploy/grafana/dashboards"
    home = environment(GRAFANA_SERVICE)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert PurePosixPath(home).parent == PurePosixPath(path)
    assert (ROOT / "deploy/grafana/dashboards" / PurePosixPath(home).name).is_file()
    # The dashboard refers to the provisioned datasource by uid.
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {
        panel["datasource"]["uid"]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
    }
    assert uids == {datasource["uid"]}


def test_promql_metric_names_are_found() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate("
        'bentoml_service_request_duration_seconds_bucket{endpoint="/predict"}[1m])))'
    )
    assert promql_metric_names(expr) == {
        "bentoml_service_request_duration_seconds_bucket"
    }
    assert promql_metric_names(
        "sum(a_total) by (kind) / on (x) group_left b offset 5m > bool 0.5"
    ) == {"a_total", "b"}


def test_dashboard_queries_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(dashboard_exprs(dashboard))
    assert exprs
    families = predictflow_metrics()
    known = set().union(*families.values())
    bentoml_prefix = bentoml_defaults()["services"]["metrics"]["namespace"] + "_"
    used = set().union(*(promql_metric_names(e) for e in exprs))
    unknown = {n for n in used if n not in known and not n.startswith(bentoml_prefix)}
    assert unknown == set(), "not defined in predictflow/metrics.py"
    # Every PredictFlow metric has a panel.
    unplotted = {f for f, samples in families.items() if not samples & used}
    assert unplotted == set()
    assert any(
        "histogram_quantile(0.99" in e
        and f'{bentoml_prefix}request_duration_seconds_bucket{{endpoint="/predict"}}'
        in e
        for e in exprs
    ), "REST P99 of /predict"


def test_dashboard_layout_is_sound() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == panel["datasource"], panel["title"]
    assert dashboard["uid"] and dashboard["title"]


# --- secrets --------------------------------------------------------------------


def secret_file_variable(key: str, value: str) -> bool:
    """A `*_FILE` setting naming a compose secret's mount: a path, not a secret."""
    return key.endswith("_FILE") and value.startswith("/run/secrets/")


def test_no_literal_secrets_in_the_compose_file() -> None:
    text = COMPOSE.read_text()
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
        key, _, value = code.strip().partition(": ")
        if secret_file_variable(key, value):
            continue
        code = re.sub(r"\$\{[^}]*\}", "${}", code)
        literal = re.search(
            rf"({SECRET_KEY.pattern})\w*\s*[:=]\s*(?![\s\"']*\$\{{)\S", code, re.I
        )
        assert literal is None, f"docker-compose.yml:{number}: {line.strip()}"
    for svc in raw_compose()["services"].values():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_KEY.search(key) and not secret_file_variable(key, str(value)):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", str(value)), (
                    f"{key}: from .env, with no default"
                )


def test_env_example_holds_placeholders_only() -> None:
    for key, value in env_example().items():
        if SECRET_KEY.search(key):
            assert "change" in value.lower(), f"{key} must be an obvious placeholder"
    assert "CHANGE THIS" in ENV_EXAMPLE.read_text()


# --- the locks: REST token, Redis AUTH, Kafka SASL -----------------------------


def jaas_users(jaas: str) -> dict[str, str]:
    """user name -> password of a PlainLoginModule JAAS line."""
    assert jaas.startswith("org.apache.kafka.common.security.plain.PlainLoginModule")
    assert jaas.endswith(";")
    return dict(re.findall(r'\buser_([A-Za-z0-9_-]+)="([^"]*)"', jaas))


def test_the_service_reads_tokens_from_a_mounted_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_of(SERVICE, monkeypatch)
    assert settings.auth.tokens_file is not None
    path = PurePosixPath(settings.auth.tokens_file)
    assert path.parent == PurePosixPath("/run/secrets")
    assert path.name in services()[SERVICE]["secrets"]
    source = compose()["secrets"][path.name]["file"]
    assert source == "./deploy/secrets/tokens"
    assert "deploy/secrets/" in (ROOT / ".gitignore").read_text().splitlines()


def test_redis_requires_the_password_the_stack_logs_in_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis = services()[REDIS]
    assert redis["command"][-1] == 'exec redis-server --requirepass "$REDIS_PASSWORD"'
    assert "$REDIS_PASSWORD" in redis["healthcheck"]["test"][1]
    password = redis["environment"]["REDIS_PASSWORD"]
    for service in ("bootstrap", SERVICE):
        connection = settings_of(service, monkeypatch).feast.redis_connection_string
        options = dict(
            part.split("=", 1) for part in connection.get_secret_value().split(",")[1:]
        )
        assert options["password"] == password, service


def test_every_kafka_listener_but_the_controller_needs_a_login(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = environment(KAFKA)
    protocols = dict(
        item.split(":")
        for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert protocols.pop(controller) == "PLAINTEXT"
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}
    mechanisms = env["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
    assert env["KAFKA_SASL_MECHANISM_INTER_BROKER_PROTOCOL"] in mechanisms
    # The service logs in as a user each client listener knows, with its password.
    settings = settings_of(SERVICE, monkeypatch)
    kafka = settings.kafka
    assert kafka.security_protocol == "SASL_PLAINTEXT"
    assert kafka.sasl_mechanism in mechanisms == ["PLAIN"]
    assert kafka.sasl_password is not None
    for listener in protocols:
        jaas = env[f"KAFKA_LISTENER_NAME_{listener}_PLAIN_SASL_JAAS_CONFIG"]
        users = jaas_users(jaas)
        assert users[str(kafka.sasl_username)] == kafka.sasl_password.get_secret_value()
        assert set(users) == {"admin", "predictflow", "requester"}
        # The broker's own login (inter-broker) is one of its users.
        own = dict(re.findall(r'\b(username|password)="([^"]*)"', jaas))
        assert users[own["username"]] == own["password"]
    # The healthcheck logs in with the broker's own JAAS line.
    check = " ".join(services()[KAFKA]["healthcheck"]["test"][1:])
    assert "--command-config" in check
    assert "$KAFKA_LISTENER_NAME_INTERNAL_PLAIN_SASL_JAAS_CONFIG" in check


def run_compose_secrets(root: Path) -> str:
    result = subprocess.run(  # noqa: S603 - our own script
        [
            sys.executable,
            str(ROOT / "scripts" / "compose_secrets.py"),
            "--root",
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_compose_secrets_makes_every_secret_once(tmp_path: Path) -> None:
    from predictflow.auth import Tokens

    shutil.copy(ENV_EXAMPLE, tmp_path / ".env.example")
    run_compose_secrets(tmp_path)
    env = dict(env_example())
    made = {
        name: value
        for name, _, value in (
            line.partition("=")
            for line in (tmp_path / ".env").read_text().splitlines()
            if line and not line.startswith("#")
        )
    }
    assert set(made) == set(env)
    for name in REQUIRED_SECRETS:
        assert made[name] != env[name] and len(made[name]) >= 32, name
    assert len({made[name] for name in REQUIRED_SECRETS}) == len(REQUIRED_SECRETS)
    for name in set(env) - REQUIRED_SECRETS:
        assert made[name] == env[name], f"{name}: not a secret, kept as it is"
    interpolate(raw_compose(), made)  # compose starts with this .env

    secrets_dir = tmp_path / "deploy" / "secrets"
    token = (secrets_dir / "rest-token").read_text().strip()
    tokens = Tokens(secrets_dir / "tokens")
    assert tokens.name_of(f"Bearer {token}") == "compose"
    assert tokens.name_of("Bearer not-the-token") is None
    requester = (secrets_dir / "requester.env").read_text()
    assert f"PREDICTFLOW_KAFKA__SASL_PASSWORD={made['KAFKA_REQUESTER_PASSWORD']}" in (
        requester
    )
    modes = {
        p.name: p.stat().st_mode & 0o777
        for p in (tmp_path / ".env", *secrets_dir.iterdir())
    }
    assert modes == {
        ".env": 0o600,
        "rest-token": 0o600,
        "requester.env": 0o600,
        "tokens": 0o644,  # digests only; the image's user must read the mount
    }

    # Idempotent: a second run (a stack already up) changes nothing.
    before = {p: p.read_bytes() for p in (tmp_path / ".env", *secrets_dir.iterdir())}
    assert "unchanged" in run_compose_secrets(tmp_path)
    assert {p: p.read_bytes() for p in before} == before
    # Your own lines in .env survive a rerun.
    with (tmp_path / ".env").open("a") as f:
        f.write("MY_OWN_SETTING=42\n")
    run_compose_secrets(tmp_path)
    assert "MY_OWN_SETTING=42" in (tmp_path / ".env").read_text().splitlines()
