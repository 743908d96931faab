"""Kafka behind SASL_SSL and ACLs, on a real broker this module starts.

`scripts/kafka.sh up` with KAFKA_SECURITY=sasl_ssl, on free ports: SCRAM users
admin, predictflow and requester, TLS from a local CA, ACLs through KRaft's
StandardAuthorizer. Each user connects exactly as a user would, from the
`clients/USER.env` file the script writes. The standalone runner
(`python -m consumers`) runs as predictflow in both delivery modes; requests
come from the requester. The broker is stopped at the end, pass or fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

from consumers.client import ChurnClient
from consumers.security import client_security
from devtools.processes import BIN, ROOT, ConsumerProcess, KafkaBroker, Workspace
from predictflow.contract import ChurnRequest, ChurnScore
from predictflow.settings import KafkaSettings, Settings

#: Longest a request may wait for its reply, or a bad one for its dead letter.
WITHIN_S = 20.0
#: An existing topic the runner's reply_to pattern allows, but its ACLs do not.
FORBIDDEN_REPLY_TOPIC = "other-replies"
REQUEST_TOPIC = "churn-requests"
REPLY_TOPIC = "churn-responses"
DLQ_TOPIC = "churn-requests.dlq"


@pytest.fixture(scope="module")
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaBroker]:
    """The secure broker, with the topic the runner may see but not write to."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-secure"), security="sasl_ssl")
    try:
        broker.start()
        # Built while the broker starts, when this session has not built it yet.
        request.getfixturevalue("workspace")
        broker.wait_up()
        asyncio.run(_create_topic(broker, FORBIDDEN_REPLY_TOPIC))
        yield broker
    finally:
        broker.down()


def _settings(broker: KafkaBroker, user: str, **changes: Any) -> KafkaSettings:
    """`user`'s Kafka settings, read from its .env file as the service would."""
    fields = {
        key.removeprefix("PREDICTFLOW_KAFKA__").lower(): value
        for key, value in broker.client_env(user).items()
    }
    return KafkaSettings.model_validate({**fields, **changes})


def _security(broker: KafkaBroker, user: str) -> dict[str, Any]:
    return client_security(_settings(broker, user))


async def _create_topic(broker: KafkaBroker, name: str) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=broker.bootstrap, **_security(broker, "admin")
    )
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()


async def _partitions(broker: KafkaBroker, user: str, topic: str) -> set[int]:
    """The partitions of `topic`, as `user` sees them (waits for its metadata)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, **_security(broker, user)
    )
    await producer.start()
    try:
        return set(await producer.partitions_for(topic))
    finally:
        await producer.stop()


async def _read(
    broker: KafkaBroker,
    user: str,
    topic: str,
    until: str,
    *,
    read_committed: bool,
    wait_s: float = WITHIN_S,
) -> list[tuple[bytes, dict[str, bytes]]]:
    """Records of `topic` (from the start) with correlation id `until`, as `user`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
        **_security(broker, user),
    )
    await consumer.start()
    found: list[tuple[bytes, dict[str, bytes]]] = []
    try:
        partitions = await _partitions(broker, user, topic)
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + wait_s
        while not found and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    headers = dict(r.headers or ())
                    if headers.get("correlation_id") == until.encode():
                        found.append((r.value, headers))
    finally:
        await consumer.stop()
    return found


async def _publish(
    broker: KafkaBroker, user: str, topic: str, key: str, **headers: str
) -> str:
    """One valid request for customer `key`, as `user`; its correlation id."""
    cid = headers.pop("correlation_id", uuid.uuid4().hex)
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, acks="all", **_security(broker, user)
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            topic,
            json.dumps({"customer_id": key}).encode(),
            key=key.encode(),
            headers=[
                (k, v.encode()) for k, v in {"correlation_id": cid, **headers}.items()
            ],
        )
    finally:
        await producer.stop()
    return cid


# -- nobody without credentials --------------------------------------------

#: Connects as PREDICTFLOW_KAFKA__* say, as the service would; prints how it
#: went. In a child process: aiokafka leaks the socket of a refused connection,
#: which this suite's `filterwarnings = error` would turn into a failure.
CONNECT = """
import asyncio
from aiokafka import AIOKafkaProducer
from consumers.security import client_security
from predictflow.settings import Settings

async def main():
    kafka = Settings().kafka
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, **client_security(kafka)
    )
    try:
        await asyncio.wait_for(producer.start(), 30)
        print("connected")
    except Exception as exc:
        print(type(exc).__name__)
    finally:
        await producer.stop()

asyncio.run(main())
"""


def _connect(broker: KafkaBroker, user: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CONNECT],
        env={**os.environ, **broker.client_env(user), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


def test_a_plaintext_client_is_refused(broker: KafkaBroker) -> None:
    plain = {"PREDICTFLOW_KAFKA__SECURITY_PROTOCOL": "PLAINTEXT"}
    assert _connect(broker, "requester", **plain) == "KafkaConnectionError"
    # The same client with TLS and its login gets in.
    assert _connect(broker, "requester") == "connected"


def test_a_wrong_password_is_refused(broker: KafkaBroker) -> None:
    wrong = {"PREDICTFLOW_KAFKA__SASL_PASSWORD": "not-the-password"}
    assert _connect(broker, "requester", **wrong) == "KafkaConnectionError"
    # Refused for its credentials, not for anything else.
    assert "invalid credentials" in broker.log_path.read_text()


# -- what each user may do ---------------------------------------------------


def _dead_letter_for_admin_only(broker: KafkaBroker) -> str:
    """A record on the dead-letter topic, readable by admin; its correlation id."""
    cid = asyncio.run(_publish(broker, "admin", DLQ_TOPIC, "7590-VHVEG"))
    assert asyncio.run(_read(broker, "admin", DLQ_TOPIC, cid, read_committed=False))
    return cid


def test_the_requester_may_not_read_dead_letters(broker: KafkaBroker) -> None:
    """Dead letters hold other requesters' payloads."""
    _dead_letter_for_admin_only(broker)

    async def subscribe() -> None:
        consumer = AIOKafkaConsumer(
            DLQ_TOPIC,
            bootstrap_servers=broker.bootstrap,
            # A group the requester may use: the topic is what is refused.
            group_id=f"requester-{uuid.uuid4().hex[:8]}",
            **_security(broker, "requester"),
        )
        try:
            await consumer.start()
            await consumer.getmany(timeout_ms=2000)
        finally:
            await consumer.stop()

    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(subscribe())


def test_the_service_may_not_read_dead_letters(broker: KafkaBroker) -> None:
    """It writes them; operators (admin) read them."""
    _dead_letter_for_admin_only(broker)

    async def fetch() -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap,
            group_id=None,
            **_security(broker, "predictflow"),
        )
        await consumer.start()
        try:
            tp = TopicPartition(DLQ_TOPIC, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            await consumer.getmany(timeout_ms=2000)
        finally:
            await consumer.stop()

    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(fetch())


def test_the_requester_publishes_requests_and_reads_replies_only(
    broker: KafkaBroker,
) -> None:
    asyncio.run(_publish(broker, "requester", REQUEST_TOPIC, "7590-VHVEG"))

    async def consume(group: str) -> None:
        consumer = AIOKafkaConsumer(
            REPLY_TOPIC,
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            **_security(broker, "requester"),
        )
        try:
            await consumer.start()
            await consumer.getmany(timeout_ms=2000)
        finally:
            await consumer.stop()

    asyncio.run(consume(f"requester-{uuid.uuid4().hex[:8]}"))
    with pytest.raises(GroupAuthorizationFailedError):
        asyncio.run(consume("predictflow-churn"))
    # A requester cannot forge replies, nor dead letters.
    for topic in (REPLY_TOPIC, DLQ_TOPIC):
        with pytest.raises(TopicAuthorizationFailedError):
            asyncio.run(_publish(broker, "requester", topic, "7590-VHVEG"))


# -- the runner as predictflow -----------------------------------------------


@dataclass
class Runner:
    """A standalone runner logged in as predictflow, and its delivery mode."""

    process: ConsumerProcess
    mode: str

    @property
    def read_committed(self) -> bool:
        return self.mode == "exactly_once"


@pytest.fixture(scope="module", params=["at_least_once", "exactly_once"])
def runner(
    request: pytest.FixtureRequest, broker: KafkaBroker, workspace: Workspace
) -> Iterator[Runner]:
    mode = request.param
    env = {
        **workspace.env,
        **broker.client_env("predictflow"),
        "PREDICTFLOW_KAFKA__EXACTLY_ONCE": str(mode == "exactly_once").lower(),
        "PREDICTFLOW_KAFKA__INSTANCE_ID": f"secure-{mode}",
        "PREDICTFLOW_KAFKA__METRICS_PORT": "0",
        # Every line the runner can write, for the password test.
        "PREDICTFLOW_LOG_LEVEL": "DEBUG",
    }
    log = workspace.root / f"secure-runner-{mode}.log"
    process = ConsumerProcess(env, log)
    try:
        process.wait_assigned()
        yield Runner(process, mode)
    finally:
        if process.proc.poll() is None:
            process.terminate()


def _requester_client(broker: KafkaBroker) -> ChurnClient:
    settings = _settings(broker, "requester")
    assert settings.bootstrap_servers is not None
    return ChurnClient(settings.bootstrap_servers, settings=settings)


def test_the_runner_scores_and_replies_over_sasl_ssl(
    runner: Runner, broker: KafkaBroker
) -> None:
    async def ask() -> list[Any]:
        async with _requester_client(broker) as client:
            return await asyncio.gather(
                *(
                    client.request(ChurnRequest(customer_id=c), reply_timeout=60)
                    for c in ("7590-VHVEG", "5575-GNVDE", "3668-QPYBK")
                )
            )

    replies = asyncio.run(ask())
    assert all(isinstance(r, ChurnScore) for r in replies), (
        replies,
        runner.process.logs()[-3000:],
    )


def test_predictflow_publish_as_the_requester(
    runner: Runner, broker: KafkaBroker, workspace: Workspace
) -> None:
    """The CLI, configured by nothing but the requester's .env file."""
    done = subprocess.run(
        [str(BIN / "predictflow"), "publish", "--customer-id", "7590-VHVEG", "--wait"],
        env={**workspace.env, **broker.client_env("requester")},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ChurnScore.model_validate_json(done.stdout.strip().splitlines()[-1])


def test_a_reply_topic_outside_the_runners_acls_is_dead_lettered(
    runner: Runner, broker: KafkaBroker
) -> None:
    """Allowed by the reply_to pattern, refused by the broker: dead-lettered,
    and the request behind it on the same partition answered within seconds."""
    key = "7590-VHVEG"
    bad = asyncio.run(
        _publish(
            broker, "requester", REQUEST_TOPIC, key, reply_to=FORBIDDEN_REPLY_TOPIC
        )
    )

    async def ask_behind_it() -> tuple[Any, float]:
        async with _requester_client(broker) as client:
            started = time.monotonic()
            reply = await client.request(
                ChurnRequest(customer_id=key), reply_timeout=WITHIN_S
            )
            return reply, time.monotonic() - started

    reply, took = asyncio.run(ask_behind_it())
    assert isinstance(reply, ChurnScore), reply
    dead = asyncio.run(
        _read(broker, "admin", DLQ_TOPIC, bad, read_committed=runner.read_committed)
    )
    assert len(dead) == 1, (dead, runner.process.logs()[-3000:])
    headers = dead[0][1]
    assert headers["error_type"] == b"reply_topic_forbidden"
    assert headers["source_topic"] == REQUEST_TOPIC.encode()
    assert took < WITHIN_S
    # Nothing reached the forbidden topic.
    assert not asyncio.run(
        _read(
            broker,
            "admin",
            FORBIDDEN_REPLY_TOPIC,
            bad,
            read_committed=False,
            wait_s=2,
        )
    )


def test_the_password_is_in_no_log_of_the_runner(
    runner: Runner, broker: KafkaBroker
) -> None:
    """Run after the others of its mode: the log holds all the runner did."""
    logs = runner.process.logs()
    assert "event=kafka_runner_started" in logs
    for user in ("predictflow", "admin", "requester"):
        password = broker.password(user)
        assert password not in logs, f"{user}'s password in the runner's log"
        assert password not in broker.log_path.read_text()


def test_the_password_is_not_in_a_settings_dump(
    broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in broker.client_env("predictflow").items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    password = broker.password("predictflow")
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == password
    for dump in (settings.model_dump_json(), repr(settings), str(settings)):
        assert password not in dump


def test_the_client_files_are_private(broker: KafkaBroker) -> None:
    for path in [
        *(broker.data_dir / "clients").iterdir(),
        *(broker.data_dir / "secrets").iterdir(),
        *(broker.data_dir / "tls").iterdir(),
        broker.data_dir / "server.properties",
    ]:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
