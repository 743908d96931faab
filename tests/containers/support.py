"""Containers for the container suite (`make test-containers`).

Every container runs a locally built image (scripts/images.sh, `make image`)
on the host's network and binds 127.0.0.1 only: no bridge network, no
published ports, no registry. testcontainers' reaper (Ryuk) is disabled, since
its image cannot be had; each container is removed when its fixture ends,
whether the tests passed or not.

A container that does not start, exits, or is not ready in time fails the
test that needed it, with the container's logs in the message.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

from devtools.processes import ROOT, free_port

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

# testcontainers reads this when its config module is first imported.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

#: Label on every container this suite starts (`docker ps --filter label=...`).
LABEL = "predictflow.test"
#: Seconds a Docker API call may take (creating or removing a container).
DOCKER_API_TIMEOUT = 600


def kafka_version() -> str:
    pom = (ROOT / "scripts" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert match, "no <kafka.version> in scripts/kafka/pom.xml"
    return match.group(1)


def image(name: str) -> str:
    """The local image of a service (names from scripts/images.sh)."""
    names = {
        "redis": "predictflow-local/redis:bookworm",
        "kafka": f"predictflow-local/kafka:{kafka_version()}",
        "prometheus": "predictflow-local/prometheus:bookworm",
        "service": os.environ.get("PREDICTFLOW_TEST_IMAGE", "churn-predictor:latest"),
    }
    return names[name]


def host_container(
    image_name: str,
    *,
    command: list[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> DockerContainer:
    """A container on the host's network (the only network allowed here)."""
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(
        image_name,
        # vfs copies the whole image to create a container and deletes it all
        # on removal: for the service image, more than docker-py's 60 s on a
        # busy 2-core machine.
        docker_client_kw={"timeout": DOCKER_API_TIMEOUT},
        # A list: docker runs it as argv, no shell splitting.
        command=command,  # type: ignore[arg-type]
        env=dict(env or {}),
    )
    return container.with_kwargs(network_mode="host", labels={LABEL: "1"})


def _logs(container: DockerContainer, limit: int = 6000) -> str:
    try:
        wrapped = container.get_wrapped_container()
        if wrapped is None:
            return "(no container)"
        out = wrapped.logs(stdout=True, stderr=True)
    except Exception as exc:  # noqa: BLE001 - logs are best effort in a failure
        return f"(no logs: {exc!r})"
    text = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
    return text[-limit:]


def _status(container: DockerContainer) -> str:
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    return str(wrapped.status)


@contextmanager
def running(
    container: DockerContainer,
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float = 120,
) -> Iterator[DockerContainer]:
    """Start `container`, wait until `ready()`, yield it, remove it at the end."""
    import docker.errors

    client = container.get_docker_client().client
    try:
        client.images.get(container.image)
    except docker.errors.ImageNotFound:
        container.get_docker_client().client.close()
        pytest.fail(
            f"{what}: image {container.image} is not built (scripts/images.sh, "
            "make image); it is never pulled"
        )
    try:
        try:
            container.start()
        except Exception as exc:  # noqa: BLE001 - any start failure fails the test
            pytest.fail(f"{what} did not start: {exc!r}\n{_logs(container)}")
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while True:
            status = _status(container)
            if status not in ("created", "running"):
                pytest.fail(f"{what} {status} while starting:\n{_logs(container)}")
            try:
                if ready():
                    break
            except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
                last = exc
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{what} not ready after {timeout:.0f}s (last error: {last!r}):\n"
                    f"{_logs(container)}"
                )
            time.sleep(0.3)
        yield container
    finally:
        container.stop()


def logs(container: DockerContainer) -> str:
    """The container's output so far (for assertion messages)."""
    return _logs(container)


# -- Redis and Kafka ---------------------------------------------------------


def _redis_pings(port: int) -> bool:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        return bool(client.ping())
    finally:
        client.close()


@contextmanager
def redis_container() -> Iterator[str]:
    """A Redis container; yields its address, host:port."""
    port = free_port()
    container = host_container(image("redis"), command=["--port", str(port)])
    with running(container, lambda: _redis_pings(port), what="Redis container"):
        yield f"127.0.0.1:{port}"


def kafka_answers(port: int, timeout: float = 2.0) -> bool:
    """Whether a broker on 127.0.0.1:port answers a Metadata request with a broker.

    The same probe as scripts/kafka.sh: Metadata v4, all topics.
    """
    client = b"predictflow-tests"
    request = (
        struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">ib", -1, 0)
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">i", len(request)) + request)
        buf = b""
        while len(buf) < 4:
            chunk = s.recv(4 - len(buf))
            if not chunk:
                return False
            buf += chunk
        (size,) = struct.unpack(">i", buf)
        body = b""
        while len(body) < size:
            chunk = s.recv(size - len(body))
            if not chunk:
                return False
            body += chunk
    correlation, _throttle, brokers = struct.unpack_from(">iii", body, 0)
    return correlation == 7 and brokers >= 1


@contextmanager
def kafka_container() -> Iterator[str]:
    """An Apache Kafka (KRaft) container; yields its bootstrap address."""
    port, controller = free_port(), free_port()
    while controller == port:
        controller = free_port()
    container = host_container(
        image("kafka"),
        env={"KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(controller)},
    )
    with running(
        container, lambda: kafka_answers(port), what="Kafka container", timeout=180
    ):
        yield f"127.0.0.1:{port}"
