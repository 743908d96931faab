"""Real services for the integration suite.

Two ways to get Redis and Kafka, chosen explicitly, never by what happens to
be installed or running:

- Native (`make test`, .ci/run): Redis from `PREDICTFLOW_TEST_REDIS`
  (host:port, set by .ci/run after starting redis-server), else a
  redis-server binary on PATH started on a free port; Kafka from
  `PREDICTFLOW_TEST_KAFKA` (bootstrap address, set by .ci/run after
  `scripts/kafka.sh up`), else scripts/kafka.sh started here on free ports.
- Containers (`make test-containers` sets `PREDICTFLOW_TEST_CONTAINERS=1`):
  both from testcontainers, local images, host networking
  (tests/containers/support.py). The `PREDICTFLOW_TEST_*` addresses are then
  ignored, and test_image.py (the service image itself) is collected.

Tests that stop the broker always get a broker of their own from
scripts/kafka.sh. A service that cannot be had fails the suite, never skips it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.processes import BentoServer, KafkaBroker, RedisServer, Workspace


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


#: The container suite: Redis and Kafka from testcontainers (explicit opt-in).
CONTAINERS = os.environ.get("PREDICTFLOW_TEST_CONTAINERS", "") == "1"

# The service image's own tests run only in the container suite.
collect_ignore = [] if CONTAINERS else ["test_image.py"]


@pytest.fixture(scope="session")
def redis_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a real Redis."""
    if CONTAINERS:
        from tests.containers.support import redis_container

        with redis_container() as address:
            yield address
    elif address := os.environ.get("PREDICTFLOW_TEST_REDIS"):
        yield address
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
    if CONTAINERS:
        from tests.containers.support import kafka_container

        with kafka_container() as address:
            yield address
    elif address := os.environ.get("PREDICTFLOW_TEST_KAFKA"):
        yield address
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
