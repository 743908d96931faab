"""Real services for the integration suite.

Kafka comes from `PREDICTFLOW_TEST_KAFKA` (bootstrap address, set by .ci/run
after `scripts/kafka.sh up`), testcontainers when a Docker engine answers, or
scripts/kafka.sh started here on free ports. Tests that stop the broker always
get a broker of their own from scripts/kafka.sh.

Redis comes from, in order: `PREDICTFLOW_TEST_REDIS` (host:port, set by
.ci/run after starting redis-server natively), testcontainers when a Docker
engine answers, or a redis-server binary on PATH. None of these: the suite
fails, it does not skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import BentoServer, KafkaBroker, RedisServer, Workspace


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def _docker_answers() -> bool:
    # The CLI, not the Python client: a refused client connection leaks its
    # socket, which `filterwarnings = error` turns into a failure.
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        done = subprocess.run(
            [docker, "info"], capture_output=True, timeout=15, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def redis_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a real Redis."""
    if address := os.environ.get("PREDICTFLOW_TEST_REDIS"):
        yield address
    elif _docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7.4") as container:
            host = container.get_container_host_ip()
            yield f"{host}:{container.get_exposed_port(6379)}"
    else:
        try:
            server = RedisServer(tmp_path_factory.mktemp("redis"))
        except RuntimeError as exc:
            pytest.fail(
                f"no Redis for the integration tests ({exc}): set "
                "PREDICTFLOW_TEST_REDIS=host:port, or install redis-server"
            )
        yield server.address
        server.stop()


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A bootstrapped installation: trained, registered, materialized, imported."""
    ws = Workspace.create(tmp_path_factory.mktemp("predictflow"))
    ws.run("bootstrap")
    return ws


@pytest.fixture(scope="session")
def redis_workspace(workspace: Workspace, redis_address: str) -> Workspace:
    """The same installation with its features also materialized into Redis."""
    redis_env = {
        "PREDICTFLOW_FEAST__ONLINE_STORE": "redis",
        "PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING": redis_address,
    }
    workspace.run("bootstrap", extra_env=redis_env)
    return Workspace(workspace.root, {**workspace.env, **redis_env})


@pytest.fixture(scope="session", params=["sqlite", "redis"])
def server(
    request: pytest.FixtureRequest, workspace: Workspace
) -> Iterator[BentoServer]:
    """`bentoml serve` on the bootstrapped installation, per online store."""
    ws = workspace
    if request.param == "redis":
        ws = request.getfixturevalue("redis_workspace")
    srv = BentoServer(ws, request.param).wait()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real Apache Kafka broker."""
    if address := os.environ.get("PREDICTFLOW_TEST_KAFKA"):
        yield address
    elif _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server()
    else:
        broker = KafkaBroker(tmp_path_factory.mktemp("kafka")).up()
        yield broker.bootstrap
        broker.down()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures tests measured (throughput etc.); never asserted on."""
    figures = [
        value
        for report in terminalreporter.stats.get("passed", [])
        for name, value in getattr(report, "user_properties", [])
        if name == "figure"
    ]
    if figures:
        terminalreporter.section("measured figures")
        for figure in figures:
            terminalreporter.write_line(str(figure))
