"""The Kafka request/reply path on a real Apache Kafka broker."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from predictflow.client import ChurnClient
from predictflow.contract import ChurnRequest, ChurnScore, ErrorReply
from predictflow.data import load_telco
from predictflow.settings import KafkaSettings
from tests.kafka_support import (
    Topics,
    committed_offsets,
    partitions_of,
    publish,
    read_all,
)
from tests.support import BentoServer, ConsumerProcess, KafkaBroker, Workspace

CUSTOMERS = load_telco()["customer_id"].tolist()


def _ids(n: int) -> list[str]:
    return list(itertools.islice(itertools.cycle(CUSTOMERS), n))


# -- the runner inside the BentoML service ---------------------------------


@pytest.fixture(scope="module")
def kafka_topics(kafka_bootstrap: str) -> Topics:
    return Topics.fresh("svc", kafka_bootstrap)


@pytest.fixture(scope="module")
def kafka_server(
    workspace: Workspace, kafka_bootstrap: str, kafka_topics: Topics
) -> Iterator[BentoServer]:
    srv = BentoServer(workspace, "kafka", kafka_topics.env(kafka_bootstrap)).wait()
    try:
        # Ready for REST; wait until the runner answers on Kafka too.
        warmup = asyncio.run(_roundtrip(kafka_bootstrap, kafka_topics, ["7590-VHVEG"]))
        assert len(warmup) == 1, srv.logs()[-3000:]
        yield srv
    finally:
        srv.stop()


async def _roundtrip(
    bootstrap: str, topics: Topics, customer_ids: list[str], wait_s: float = 120
) -> dict[str, list[tuple[dict[str, object], dict[str, bytes]]]]:
    sent = await publish(bootstrap, topics.request, customer_ids)
    replies = await read_all(
        bootstrap, topics.reply, until=set(sent.records), wait_s=wait_s
    )
    return {cid: replies[cid] for cid in sent.records if cid in replies}


def test_a_thousand_requests_get_their_replies_equal_to_rest(
    kafka_server: BentoServer, kafka_bootstrap: str, kafka_topics: Topics
) -> None:
    ids = CUSTOMERS[:1000]
    sent = asyncio.run(publish(kafka_bootstrap, kafka_topics.request, ids))
    replies = asyncio.run(
        read_all(kafka_bootstrap, kafka_topics.reply, until=set(sent.records))
    )
    rest: dict[str, float] = {}
    for start in range(0, len(ids), 250):
        body = {"requests": [{"customer_id": c} for c in ids[start : start + 250]]}
        r = httpx.post(f"{kafka_server.url}/predict_batch", json=body, timeout=60)
        assert r.status_code == 200, r.text
        rest.update(
            (x["customer_id"], x["churn_probability"]) for x in r.json()["results"]
        )
    assert set(sent.records) <= set(replies), "some requests got no reply"
    for correlation_id, (customer_id, _, _) in sent.records.items():
        body, headers = replies[correlation_id][0]
        score = ChurnScore.model_validate(body)
        assert score.customer_id == customer_id
        assert headers["model_version"].decode() == score.model_version
        assert abs(score.churn_probability - rest[customer_id]) <= 1e-6


def test_poison_records_are_dead_lettered_and_valid_ones_answered(
    kafka_server: BentoServer, kafka_bootstrap: str, kafka_topics: Topics
) -> None:
    async def scenario() -> tuple[dict[str, str], set[str], str]:
        poison = {
            "invalid_json": (b"{not json", [("correlation_id", b"p1")]),
            "validation_error": (
                json.dumps({"customer_id": "7590-VHVEG", "tenure": "x"}).encode(),
                [("correlation_id", b"p2")],
            ),
            "missing_correlation_id": (
                json.dumps({"customer_id": "7590-VHVEG"}).encode(),
                [],
            ),
            "empty_value": (None, [("correlation_id", b"p4")]),
            "invalid_reply_to": (
                json.dumps({"customer_id": "7590-VHVEG"}).encode(),
                [("correlation_id", b"p5"), ("reply_to", b"no such/topic")],
            ),
        }
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        marker = uuid.uuid4().hex
        valid: set[str] = set()
        try:
            for i, (kind, (value, headers)) in enumerate(poison.items()):
                await producer.send_and_wait(
                    kafka_topics.request,
                    value,
                    key=b"7590-VHVEG",
                    headers=[*headers, ("test_marker", f"{marker}-{kind}".encode())],
                )
                cid = f"valid-{marker}-{i}"
                valid.add(cid)
                await producer.send_and_wait(
                    kafka_topics.request,
                    json.dumps({"customer_id": CUSTOMERS[i]}).encode(),
                    key=CUSTOMERS[i].encode(),
                    headers=[("correlation_id", cid.encode())],
                )
            unknown = f"unknown-{marker}"
            await producer.send_and_wait(
                kafka_topics.request,
                json.dumps({"customer_id": "0000-NOBODY"}).encode(),
                headers=[("correlation_id", unknown.encode())],
            )
        finally:
            await producer.stop()
        return {k: f"{marker}-{k}" for k in poison}, valid, unknown

    markers, valid, unknown = asyncio.run(scenario())
    replies = asyncio.run(
        read_all(kafka_bootstrap, kafka_topics.reply, until={*valid, unknown})
    )
    assert valid <= set(replies)
    for cid in valid:
        assert "churn_probability" in replies[cid][0][0]
    error = ErrorReply.model_validate(replies[unknown][0][0])
    assert error.error == "unknown_customer"

    dead = asyncio.run(read_all(kafka_bootstrap, kafka_topics.dlq, wait_s=30))
    by_marker = {
        headers.get("test_marker", b"").decode(): headers
        for records in dead.values()
        for _, headers in records
    }
    for kind, marker in markers.items():
        headers = by_marker.get(marker)
        assert headers is not None, f"{kind} was not dead-lettered"
        assert headers["error_type"].decode() == kind
        assert headers["error_message"]
        assert headers["source_topic"].decode() == kafka_topics.request
        assert int(headers["source_partition"]) >= 0
        assert int(headers["source_offset"]) >= 0


def test_metrics_count_the_kafka_path(
    kafka_server: BentoServer, kafka_bootstrap: str, kafka_topics: Topics
) -> None:
    asyncio.run(_roundtrip(kafka_bootstrap, kafka_topics, CUSTOMERS[:20]))
    text = httpx.get(f"{kafka_server.url}/metrics", timeout=10).text
    for name in (
        "predictflow_kafka_consumed_total",
        "predictflow_kafka_replied_total",
        "predictflow_kafka_batch_size_count",
        "predictflow_kafka_processing_seconds_count",
        'predictflow_predictions_total{outcome="scored",source="kafka"}',
        "predictflow_kafka_consumer_lag",
    ):
        assert name in text, name


def test_the_client_and_the_cli_get_replies(
    kafka_server: BentoServer,
    kafka_bootstrap: str,
    kafka_topics: Topics,
    workspace: Workspace,
    tmp_path: Path,
) -> None:
    settings = KafkaSettings(
        request_topic=kafka_topics.request, reply_topic=kafka_topics.reply
    )

    async def ask() -> tuple[object, object]:
        async with ChurnClient(kafka_bootstrap, settings=settings) as client:
            known = await client.request(ChurnRequest(customer_id="7590-VHVEG"))
            unknown = await client.request(ChurnRequest(customer_id="0000-NOBODY"))
            return known, unknown

    known, unknown = asyncio.run(ask())
    assert isinstance(known, ChurnScore) and known.customer_id == "7590-VHVEG"
    assert isinstance(unknown, ErrorReply) and unknown.error == "unknown_customer"

    env = {**workspace.env, **kafka_topics.env(kafka_bootstrap)}
    done = workspace.run(
        "publish", "--customer-id", "5575-GNVDE", "--wait", extra_env=env, timeout=120
    )
    assert ChurnScore.model_validate_json(done.stdout).customer_id == "5575-GNVDE"

    lines = tmp_path / "requests.jsonl"
    lines.write_text(
        "".join(json.dumps({"customer_id": c}) + "\n" for c in CUSTOMERS[:5])
    )
    done = workspace.run("publish", "--file", str(lines), extra_env=env, timeout=120)
    printed = [json.loads(x) for x in done.stdout.splitlines()]
    assert sorted(p["customer_id"] for p in printed) == sorted(CUSTOMERS[:5])
    assert all(p["correlation_id"] and "churn_probability" in p for p in printed)


# -- the standalone runner (python -m consumers) ----------------------------


class Consumers:
    """Starts standalone runners against one test's topics, one log per start."""

    def __init__(
        self, workspace: Workspace, bootstrap: str, topics: Topics, **extra: str
    ) -> None:
        self.env = {**workspace.env, **topics.env(bootstrap), **extra}
        self.dir = workspace.root / "consumers" / topics.group
        self.dir.mkdir(parents=True)
        self.processes: list[ConsumerProcess] = []

    def start(self, instance: str = "a") -> ConsumerProcess:
        env = {
            **self.env,
            "PREDICTFLOW_KAFKA__INSTANCE_ID": instance,
            # What `python -m consumers` reads today (it ignores the setting
            # above); the instance names the transactional id, so the tests
            # that tell runners apart need it to arrive.
            "PREDICTFLOW_KAFKA_INSTANCE": instance,
        }
        log = self.dir / f"{instance}-{len(self.processes)}.log"
        process = ConsumerProcess(env, log)
        self.processes.append(process)
        return process.wait_assigned()

    def kill_all(self) -> None:
        for process in self.processes:
            if process.proc.poll() is None:
                process.kill()


SpawnConsumers = Callable[..., Consumers]


@pytest.fixture
def consumers(workspace: Workspace) -> Iterator[SpawnConsumers]:
    """Makes `Consumers` for a test; whatever still runs is killed at teardown."""
    made: list[Consumers] = []

    def spawn(bootstrap: str, topics: Topics, **extra: str) -> Consumers:
        made.append(Consumers(workspace, bootstrap, topics, **extra))
        return made[-1]

    yield spawn
    for group in made:
        group.kill_all()


async def _reply_count(bootstrap: str, topic: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        parts = await partitions_of(bootstrap, topic)
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


def _wait_replies(
    bootstrap: str, topic: str, at_least: int, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(_reply_count(bootstrap, topic)) >= at_least:
            return
        time.sleep(0.2)
    raise TimeoutError(f"fewer than {at_least} replies on {topic}")


@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
def test_sigkill_twice_mid_stream_loses_nothing(
    consumers: SpawnConsumers,
    workspace: Workspace,
    kafka_bootstrap: str,
    mode: str,
    request: pytest.FixtureRequest,
) -> None:
    topics = Topics.fresh(f"kill-{mode}", kafka_bootstrap)
    extra = {"PREDICTFLOW_KAFKA__EXACTLY_ONCE": str(mode == "exactly_once").lower()}
    group = consumers(kafka_bootstrap, topics, **extra)
    first = group.start()
    sent = asyncio.run(publish(kafka_bootstrap, topics.request, _ids(10_000)))
    started = time.monotonic()
    for threshold in (2_000, 5_000):
        _wait_replies(kafka_bootstrap, topics.reply, threshold)
        first.kill()
        first = group.start()
    replies = asyncio.run(
        read_all(
            kafka_bootstrap,
            topics.reply,
            until=set(sent.records),
            read_committed=mode == "exactly_once",
            settle=3.0 if mode == "exactly_once" else 0.0,
            wait_s=300,
        )
    )
    elapsed = time.monotonic() - started
    first.terminate()
    missing = set(sent.records) - set(replies)
    assert not missing, f"{len(missing)} requests never answered"
    request.node.user_properties.append(
        (
            "figure",
            f"[{mode}] 10,000 requests answered in {elapsed:.1f}s with 2 "
            f"SIGKILLs ({10_000 / elapsed:.0f} msg/s, restarts included)",
        )
    )
    if mode == "exactly_once":
        duplicated = {cid for cid, rs in replies.items() if len(rs) > 1}
        assert not duplicated, (
            f"{len(duplicated)} replies seen twice under read_committed"
        )


def test_consumers_joining_and_leaving_lose_nothing(
    consumers: SpawnConsumers, workspace: Workspace, kafka_bootstrap: str
) -> None:
    topics = Topics.fresh("rebalance", kafka_bootstrap)
    group = consumers(kafka_bootstrap, topics)
    a = group.start("a")

    async def stream() -> object:
        return await publish(kafka_bootstrap, topics.request, _ids(6_000), rate=600)

    async def scenario() -> object:
        task = asyncio.create_task(stream())
        await asyncio.sleep(2)
        b = await asyncio.to_thread(group.start, "b")  # 1 -> 2
        await asyncio.sleep(3)
        assert await asyncio.to_thread(b.terminate) == 0  # 2 -> 1
        return await task

    sent = asyncio.run(scenario())
    replies = asyncio.run(
        read_all(kafka_bootstrap, topics.reply, until=set(sent.records), wait_s=180)  # type: ignore[attr-defined]
    )
    a.terminate()
    missing = set(sent.records) - set(replies)  # type: ignore[attr-defined]
    assert not missing, f"{len(missing)} requests lost across the rebalance"


def test_sigterm_exits_promptly_with_every_reply_committed(
    consumers: SpawnConsumers, workspace: Workspace, kafka_bootstrap: str
) -> None:
    topics = Topics.fresh("sigterm", kafka_bootstrap)
    consumer = consumers(kafka_bootstrap, topics).start()
    sent = asyncio.run(publish(kafka_bootstrap, topics.request, _ids(5_000)))
    _wait_replies(kafka_bootstrap, topics.reply, 500)
    asked = time.monotonic()
    code = consumer.terminate(timeout=60)
    took = time.monotonic() - asked
    assert code == 0, consumer.logs()[-2000:]
    assert took < 30, f"SIGTERM took {took:.1f}s"
    committed = asyncio.run(
        committed_offsets(kafka_bootstrap, topics.group, topics.request)
    )
    replies = asyncio.run(read_all(kafka_bootstrap, topics.reply, wait_s=10))
    covered = {
        cid
        for cid, (_, partition, offset) in sent.records.items()
        if offset < committed.get(partition, -1)
    }
    replied = set(replies) & set(sent.records)
    assert covered, "nothing was committed"
    # Every committed request has its reply, and every reply sent is committed.
    assert covered <= replied
    assert replied <= covered


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker these tests may stop and start."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-own")).up()
    yield broker
    broker.down()


def test_the_runner_recovers_from_a_broker_restart(
    consumers: SpawnConsumers, own_broker: KafkaBroker
) -> None:
    bootstrap = own_broker.bootstrap
    topics = Topics.fresh("restart", bootstrap)
    consumer = consumers(bootstrap, topics).start()
    sent = asyncio.run(publish(bootstrap, topics.request, _ids(4_000)))
    _wait_replies(bootstrap, topics.reply, 500)
    own_broker.down()
    time.sleep(3)
    own_broker.up()
    sent = asyncio.run(publish(bootstrap, topics.request, _ids(1_000), sent))
    replies = asyncio.run(
        read_all(bootstrap, topics.reply, until=set(sent.records), wait_s=240)
    )
    missing = set(sent.records) - set(replies)
    assert not missing, f"{len(missing)} requests lost across the broker restart"
    assert consumer.terminate() == 0


def test_sigterm_stops_the_runner_while_the_broker_is_down(
    consumers: SpawnConsumers, own_broker: KafkaBroker
) -> None:
    bootstrap = own_broker.bootstrap
    topics = Topics.fresh("down", bootstrap)
    consumer = consumers(bootstrap, topics).start()
    own_broker.down()
    try:
        time.sleep(2)
        asked = time.monotonic()
        consumer.terminate(timeout=90)
        assert time.monotonic() - asked < 60, "SIGTERM did not stop the runner"
    finally:
        own_broker.up()
