"""The compose stack's Kafka logins, on a real broker set up by docker-compose.yml.

No image registry is reachable here, so the compose stack itself is not run
(docs/containers.md). What can drift is tested for real instead: the broker's
settings are the compose file's `KAFKA_*` variables, turned into broker
properties the way the apache/kafka image does, with secrets made by
`scripts/compose_secrets.py`; the healthcheck's login, the service's and the
requester's are the ones the compose file and `deploy/secrets/requester.env`
give them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from consumers.client import ChurnClient
from consumers.security import client_security
from devtools.processes import ROOT, ConsumerProcess, Workspace, free_port, wait_for
from predictflow.contract import ChurnRequest, ChurnScore
from predictflow.settings import KafkaSettings
from tests.deploy.test_compose import interpolate, raw_compose


def image_properties(env: dict[str, str]) -> dict[str, str]:
    """Broker properties from KAFKA_* variables, by the apache/kafka image's rule.

    KAFKA_ is dropped, the rest lower-cased; `___` becomes `-`, `__` `_`, `_` `.`.
    """
    props = {}
    for key, value in env.items():
        if key.startswith("KAFKA_"):
            name = key[len("KAFKA_") :].lower()
            name = name.replace("___", "-").replace("__", "\0").replace("_", ".")
            props[name.replace("\0", "_")] = str(value)
    return props


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (
        line.partition("=")
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {key: value for key, _, value in pairs}


@dataclass
class ComposeKafka:
    """The compose file's broker, run from the Kafka jars on free local ports."""

    root: Path
    compose: dict
    bootstrap: str  # the INTERNAL listener (the stack's kafka:9092)
    external: str  # the EXTERNAL listener (the host's 127.0.0.1:9094)
    proc: subprocess.Popen[bytes]

    def service_env(self) -> dict[str, str]:
        """The churn-predictor container's PREDICTFLOW_KAFKA__* variables."""
        env = self.compose["services"]["churn-predictor"]["environment"]
        kafka = {k: str(v) for k, v in env.items() if k.startswith("PREDICTFLOW_KAFKA")}
        return {**kafka, "PREDICTFLOW_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap}

    def requester(self) -> KafkaSettings:
        """What deploy/secrets/requester.env configures, on this broker."""
        fields = {
            key.removeprefix("PREDICTFLOW_KAFKA__").lower(): value
            for key, value in read_env_file(
                self.root / "deploy" / "secrets" / "requester.env"
            ).items()
        }
        return KafkaSettings.model_validate(
            {**fields, "bootstrap_servers": self.external}
        )


def kafka_libs() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "kafka.sh"), "libs"],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compose_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeKafka]:
    root = tmp_path_factory.mktemp("compose")
    shutil.copy(ROOT / ".env.example", root / ".env.example")
    subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "python"),
            str(ROOT / "scripts" / "compose_secrets.py"),
            "--root",
            str(root),
        ],
        check=True,
        timeout=60,
        stdout=subprocess.DEVNULL,
    )
    compose = interpolate(raw_compose(), read_env_file(root / ".env"))
    kafka_env = compose["services"]["kafka"]["environment"]
    props = image_properties(kafka_env)
    # Where this machine differs from the stack: ports, host names, storage.
    internal, controller, external = free_port(), free_port(), free_port()
    props.update(
        {
            "listeners": f"INTERNAL://127.0.0.1:{internal},"
            f"CONTROLLER://127.0.0.1:{controller},EXTERNAL://127.0.0.1:{external}",
            "advertised.listeners": f"INTERNAL://127.0.0.1:{internal},"
            f"EXTERNAL://127.0.0.1:{external}",
            "controller.quorum.voters": f"1@127.0.0.1:{controller}",
            "log.dirs": str(root / "data"),
        }
    )
    server = root / "server.properties"
    server.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    java = shutil.which("java") or "java"
    classpath = f"{kafka_libs()}/*"
    subprocess.run(
        [
            java,
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            kafka_env["CLUSTER_ID"],  # as the image formats it
            "-c",
            str(server),
        ],
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )
    log = (root / "broker.out").open("wb")
    proc = subprocess.Popen(
        [java, "-Xms128m", "-Xmx384m", "-cp", classpath, "kafka.Kafka", str(server)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    broker = ComposeKafka(
        root, compose, f"127.0.0.1:{internal}", f"127.0.0.1:{external}", proc
    )
    try:
        wait_for(lambda: healthcheck(broker) == 0, 120, "the compose broker")
        yield broker
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def healthcheck(broker: ComposeKafka, jaas: str | None = None) -> int:
    """The compose healthcheck's command, with this machine's tool and port."""
    test = broker.compose["services"]["kafka"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    # Compose turned `$$` into `$`: the shell in the container expands it.
    command = test[1].replace(
        "/opt/kafka/bin/kafka-broker-api-versions.sh",
        f"java -cp '{kafka_libs()}/*' org.apache.kafka.tools.BrokerApiVersionsCommand",
    )
    command = command.replace("localhost:9092", broker.bootstrap)
    command = command.replace(
        "/tmp/healthcheck.properties",  # noqa: S108 - the container's path
        str(broker.root / "hc.properties"),
    )
    env = broker.compose["services"]["kafka"]["environment"]
    name = "KAFKA_LISTENER_NAME_INTERNAL_PLAIN_SASL_JAAS_CONFIG"
    shell_env = {**os.environ, name: jaas if jaas is not None else env[name]}
    return subprocess.run(
        ["sh", "-c", command], env=shell_env, timeout=90, check=False
    ).returncode


def test_the_healthcheck_logs_in_as_the_broker_and_fails_without(
    compose_kafka: ComposeKafka,
) -> None:
    assert healthcheck(compose_kafka) == 0
    env = compose_kafka.compose["services"]["kafka"]["environment"]
    jaas = env["KAFKA_LISTENER_NAME_INTERNAL_PLAIN_SASL_JAAS_CONFIG"]
    wrong = re.sub(r'\bpassword="[^"]*"', 'password="wrong"', jaas, count=1)
    assert healthcheck(compose_kafka, wrong) != 0


def test_no_login_no_entry(compose_kafka: ComposeKafka) -> None:
    async def connect(**security: object) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=compose_kafka.external,
            request_timeout_ms=5000,
            **security,  # type: ignore[arg-type]
        )
        try:
            await producer.start()
        finally:
            await producer.stop()

    with pytest.raises(KafkaConnectionError):
        asyncio.run(connect())  # plaintext, no login
    wrong = client_security(compose_kafka.requester())
    wrong["sasl_plain_password"] = "not-the-password"  # noqa: S105
    with pytest.raises(KafkaConnectionError):
        asyncio.run(connect(**wrong))


def test_the_service_scores_for_the_requester_on_the_compose_logins(
    compose_kafka: ComposeKafka, workspace: Workspace, tmp_path: Path
) -> None:
    env = {
        **workspace.env,
        **compose_kafka.service_env(),
        "PREDICTFLOW_KAFKA__INSTANCE_ID": "compose",
        "PREDICTFLOW_KAFKA__METRICS_PORT": "0",
    }
    runner = ConsumerProcess(env, tmp_path / "runner.log")
    try:
        runner.wait_assigned()
        requester = compose_kafka.requester()

        async def ask() -> list[object]:
            async with ChurnClient(
                compose_kafka.external, settings=requester
            ) as client:
                return list(
                    await asyncio.gather(
                        *(
                            client.request(
                                ChurnRequest(customer_id=c), reply_timeout=60
                            )
                            for c in ("7590-VHVEG", "5575-GNVDE")
                        )
                    )
                )

        replies = asyncio.run(ask())
        assert all(isinstance(r, ChurnScore) for r in replies), (
            replies,
            runner.logs()[-3000:],
        )
        password = requester.sasl_password
        assert password is not None
        service_password = compose_kafka.service_env()[
            "PREDICTFLOW_KAFKA__SASL_PASSWORD"
        ]
        for secret in (password.get_secret_value(), service_password):
            assert secret not in runner.logs()
    finally:
        runner.terminate()
