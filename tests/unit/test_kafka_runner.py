"""The runner's parts with the broker faked: partitioning, batching, delivery, commits.

Each part is driven through its public API (`consumers.producer`,
`consumers.commits`, `consumers.clients`). The broker-facing behaviour
(at-least-once under SIGKILL, rebalances, broker restarts, exactly-once) is
tested against a real Kafka in tests/integration/test_kafka*.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.errors import TopicAuthorizationFailedError
from aiokafka.partitioner import DefaultPartitioner

from consumers import clients, handler
from consumers.commits import CommitQueue, InFlight
from consumers.producer import Delivery, partition, send_by_partition
from consumers.reply_topics import ReplyTopics

# -- the partitioned batch producer ------------------------------------------


def test_partition_is_the_default_partitioners() -> None:
    default = DefaultPartitioner()
    keys = [f"{i:04d}-ABCDE".encode() for i in range(500)] + [b"", b"x" * 100]
    for count in (1, 3, 6, 7):
        parts = list(range(count))
        for _ in range(2):  # the second pass reads the remembered partitions
            for key in keys:
                assert partition(key, parts, parts) == default(key, parts, parts)
    # No key: a partition with a leader, when the metadata knows one.
    assert {partition(None, [4, 5], [5]) for _ in range(20)} == {5}
    assert {partition(None, [4, 5], []) for _ in range(50)} == {4, 5}


@dataclass
class FakeBatch:
    capacity: int
    records: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)

    def append(self, *, timestamp: Any, key: Any, value: Any, headers: Any) -> Any:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value))
        return object()


class FakeCluster:
    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1, 2} if topic == "replies" else {0}


class FakeClient:
    cluster = FakeCluster()


class FakeProducer:
    """Takes batches; the broker refuses every batch to a topic in `refusing`."""

    client = FakeClient()

    def __init__(self, capacity: int, refusing: frozenset[str] = frozenset()) -> None:
        self.capacity = capacity
        self.refusing = refusing
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes | None]]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2} if topic == "replies" else {0}

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(
        self, batch: FakeBatch, topic: str, *, partition: int
    ) -> asyncio.Future[None]:
        self.sent.append((topic, partition, batch.records))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if topic in self.refusing:
            future.set_exception(TopicAuthorizationFailedError())
        else:
            future.set_result(None)
        return future


def outgoing(topic: str, i: int) -> handler.Outgoing:
    return handler.Outgoing(
        topic=topic,
        key=f"{i:04d}-KEY".encode(),
        value=f"value {i}".encode(),
        headers=[],
        kind="score",
    )


async def test_batches_per_partition_in_order_and_splits_full_ones() -> None:
    producer = FakeProducer(capacity=4)
    records = [outgoing("replies", i) for i in range(40)] + [outgoing("dlq", 99)]
    sent = await send_by_partition(producer, records)

    assert len(sent) == len(producer.sent)
    assert [[o.value for o in s.records] for s in sent] == [
        [v for _, v in batch] for _, _, batch in producer.sent
    ]
    assert all(len(batch) <= 4 for _, _, batch in producer.sent)
    default = DefaultPartitioner()
    per_partition: dict[tuple[str, int], list[bytes | None]] = {}
    for topic, part, batch in producer.sent:
        per_partition.setdefault((topic, part), []).extend(v for _, v in batch)
        for key, _ in batch:
            parts = [0, 1, 2] if topic == "replies" else [0]
            assert part == default(key, parts, parts)
    # Every record once, in its original order within its partition.
    for (topic, _), values in per_partition.items():
        expected = [o.value for o in records if o.topic == topic and o.value in values]
        assert values == expected
    assert sum(len(v) for v in per_partition.values()) == len(records)


@dataclass(frozen=True)
class FakeRecord:
    topic: str = "requests"
    partition: int = 0
    offset: int = 7
    key: bytes | None = b"7590-VHVEG"
    value: bytes | None = b'{"customer_id": "7590-VHVEG"}'
    headers: list[tuple[str, bytes]] = field(default_factory=list)


ROUTES = handler.Routes(default_reply_to="replies", dlq="dlq", request_topic="requests")


@pytest.mark.parametrize("transactional", [False, True])
async def test_a_refused_reply_is_dead_lettered_unless_in_a_transaction(
    transactional: bool,
) -> None:
    producer = FakeProducer(capacity=10, refusing=frozenset({"other.replies"}))
    topics = ReplyTopics(metadata_timeout=1, remember_seconds=60)
    delivery = Delivery(ROUTES, topics, transactional=transactional)
    reply = handler.Outgoing(
        topic="other.replies",
        key=b"7590-VHVEG",
        value=b"{}",
        headers=[],
        kind="score",
        source=FakeRecord(),
    )
    (ack,) = await delivery.send(producer, [reply])
    if transactional:
        # Nothing more can be sent in the transaction: it aborts, and the
        # redelivered poll finds the topic remembered as refused.
        with pytest.raises(TopicAuthorizationFailedError):
            await ack
    else:
        (dead,) = await ack
        assert (dead.topic, dead.kind, dead.reason) == (
            "dlq",
            "dead_letter",
            "reply_topic_forbidden",
        )
        assert producer.sent[-1][0] == "dlq"
    refusal = topics.remembered("other.replies")
    assert refusal is not None and refusal[0] == "reply_topic_forbidden"


# -- the ack-ordered commit queue ----------------------------------------------


@dataclass
class Committer:
    commits: list[dict[Any, int]] = field(default_factory=list)
    told: list[list[InFlight]] = field(default_factory=list)

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(dict(offsets))

    def committed(self, items: list[InFlight]) -> None:
        self.told.append(items)


@dataclass
class Queue:
    queue: CommitQueue
    broker: Committer

    def add(self, *offsets: int) -> list[asyncio.Future[list[handler.Outgoing]]]:
        """Polls handed to the producer (one reply each, ending at these offsets)."""
        acks = []
        for offset in offsets:
            ack: asyncio.Future[list[handler.Outgoing]]
            ack = asyncio.get_running_loop().create_future()
            self.queue.add(InFlight({"tp": offset}, [ack], 1, 0.0))
            acks.append(ack)
        return acks


@pytest.fixture
async def queue() -> AsyncIterator[Queue]:
    """A commit queue with its committer task running."""
    broker = Committer()
    commits = CommitQueue(broker.commit, broker.committed, asyncio.Lock())
    committer = asyncio.create_task(commits.run())
    yield Queue(commits, broker)
    committer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await committer


async def settle() -> None:
    """Let the committer run until it waits again."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_commits_follow_acks_in_poll_order(queue: Queue) -> None:
    ack1, ack2, ack3 = queue.add(10, 20, 30)
    # The second poll is acknowledged first: nothing may be committed
    # before the first is.
    ack2.set_result([])
    await settle()
    assert queue.broker.commits == []
    ack1.set_result([])
    await settle()
    # One commit for both acknowledged polls, none past the third.
    assert queue.broker.commits == [{"tp": 20}]
    assert [[p.offsets for p in told] for told in queue.broker.told] == [
        [{"tp": 10}, {"tp": 20}]
    ]
    ack3.set_result([])
    await settle()
    assert queue.broker.commits == [{"tp": 20}, {"tp": 30}]
    assert len(queue.queue) == 0


async def test_a_failed_ack_is_handed_to_the_loop_and_nothing_after_it_commits(
    queue: Queue,
) -> None:
    ack1, ack2 = queue.add(10, 20)
    ack2.set_result([])
    ack1.set_exception(RuntimeError("broker said no"))
    await settle()
    assert queue.broker.commits == []
    with pytest.raises(RuntimeError, match="broker said no"):
        queue.queue.raise_failure()
    queue.queue.raise_failure()  # handed over once


async def test_no_commit_gets_past_a_failed_poll_not_even_a_drain(
    queue: Queue,
) -> None:
    ack1, ack2, ack3 = queue.add(10, 20, 30)
    ack2.set_exception(RuntimeError("record too large"))
    ack3.set_result([])
    ack1.set_result([])
    await settle()
    # The first poll is committed; the failed one stays first in line.
    assert queue.broker.commits == [{"tp": 10}]
    assert len(queue.queue) == 2
    # A rebalance or shutdown drain must not commit the third poll.
    with pytest.raises(RuntimeError, match="record too large"):
        await queue.queue.drain()
    assert queue.broker.commits == [{"tp": 10}]
    # The rewind forgets what was in flight and the failure with it.
    queue.queue.abandon()
    assert len(queue.queue) == 0
    queue.queue.raise_failure()
    await queue.queue.drain()
    assert queue.broker.commits == [{"tp": 10}]


async def test_a_drain_commits_every_poll_once_acked(queue: Queue) -> None:
    acks = queue.add(10, 20)
    draining = asyncio.create_task(queue.queue.drain())
    await settle()
    assert not draining.done()
    for ack in acks:
        ack.set_result([])
    await draining
    await settle()
    assert queue.broker.commits[-1] == {"tp": 20}
    assert len(queue.queue) == 0


async def test_a_failed_rewind_holds_commits_until_the_next_rewind(
    queue: Queue,
) -> None:
    (ack,) = queue.add(10)
    queue.queue.fail(RuntimeError("coordinator not available"))
    ack.set_result([])
    await settle()
    assert queue.broker.commits == []
    with pytest.raises(RuntimeError, match="coordinator not available"):
        await queue.queue.drain()


# -- rewinding ---------------------------------------------------------------


class FakeConsumer:
    def __init__(self, committed: dict[str, int | None]) -> None:
        self._committed = committed
        self.fails = False
        self.seeks: list[tuple[str, int | None]] = []

    def assignment(self) -> set[str]:
        return set(self._committed)

    async def committed(self, tp: str) -> int | None:
        if self.fails:
            raise RuntimeError("coordinator not available")
        return self._committed[tp]

    def seek(self, tp: str, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def seek_to_beginning(self, tp: str) -> None:
        self.seeks.append((tp, None))


async def test_rewind_seeks_to_the_committed_offsets_or_the_beginning() -> None:
    consumer = FakeConsumer({"a": 12, "b": None})
    await clients.rewind(consumer)
    assert sorted(consumer.seeks, key=str) == sorted([("a", 12), ("b", None)], key=str)


async def test_a_rewind_that_cannot_read_the_committed_offsets_raises() -> None:
    consumer = FakeConsumer({"a": 12})
    consumer.fails = True
    with pytest.raises(RuntimeError, match="coordinator not available"):
        await clients.rewind(consumer)
    assert consumer.seeks == []


# -- the standalone runner's metrics endpoint ----------------------------------


def test_metrics_port_0_serves_no_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    import prometheus_client

    from consumers.__main__ import serve_metrics

    started: list[int] = []
    monkeypatch.setattr(
        prometheus_client,
        "start_http_server",
        lambda port, addr: started.append(port),
    )
    assert serve_metrics(0) is False
    assert started == []  # 0 once bound an ephemeral port nobody could scrape
    assert serve_metrics(9108) is True
    assert started == [9108]
