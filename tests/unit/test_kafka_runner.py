"""The runner's own logic with the broker faked: partitioning, batching, commits.

The broker-facing behaviour (at-least-once under SIGKILL, rebalances, broker
restarts) is tested against a real Kafka in tests/integration/test_kafka.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from consumers import handler
from consumers.runner import KafkaRunner, _InFlight
from predictflow.settings import KafkaSettings


def runner() -> KafkaRunner:
    return KafkaRunner(
        scorer=None,  # type: ignore[arg-type]  # not used by these paths
        settings=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
    )


def test_partition_is_the_default_partitioners() -> None:
    r = runner()
    default = DefaultPartitioner()
    keys = [f"{i:04d}-ABCDE".encode() for i in range(500)] + [b"", b"x" * 100]
    for count in (1, 3, 6, 7):
        parts = list(range(count))
        for _ in range(2):  # the second pass reads the remembered hashes
            for key in keys:
                assert r._partition(key, parts, parts) == default(key, parts, parts)
    # No key: a partition with a leader, when the metadata knows one.
    assert {r._partition(None, [4, 5], [5]) for _ in range(20)} == {5}
    assert {r._partition(None, [4, 5], []) for _ in range(50)} == {4, 5}


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
    client = FakeClient()

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
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


async def test_send_all_batches_per_partition_in_order_and_splits_full_ones() -> None:
    r = runner()
    r._producer = FakeProducer(capacity=4)
    records = [outgoing("replies", i) for i in range(40)] + [outgoing("dlq", 99)]
    acks = await r._send_all(records)

    assert len(acks) == len(r._producer.sent)
    assert all(len(batch) <= 4 for _, _, batch in r._producer.sent)
    default = DefaultPartitioner()
    per_partition: dict[tuple[str, int], list[bytes | None]] = {}
    for topic, partition, batch in r._producer.sent:
        per_partition.setdefault((topic, partition), []).extend(v for _, v in batch)
        for key, _ in batch:
            parts = [0, 1, 2] if topic == "replies" else [0]
            assert partition == default(key, parts, parts)
    # Every record once, in its original order within its partition.
    for (topic, _), values in per_partition.items():
        expected = [o.value for o in records if o.topic == topic and o.value in values]
        assert values == expected
    assert sum(len(v) for v in per_partition.values()) == len(records)


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[Any, int]] = []
        self.seeks: list[tuple[Any, int]] = []
        self.committed_fails = False

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(dict(offsets))

    def assignment(self) -> set[str]:
        return {"tp"}

    async def committed(self, tp: Any) -> int:
        if self.committed_fails:
            raise RuntimeError("coordinator not available")
        return self.commits[-1][tp] if self.commits else 0

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))


@pytest.fixture
async def committing() -> AsyncIterator[KafkaRunner]:
    """A runner with a fake consumer and its committer task running."""
    r = runner()
    r._consumer = FakeConsumer()
    committer = asyncio.create_task(r._commit_loop())
    yield r
    committer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await committer


def queue(r: KafkaRunner, *offsets: int) -> list[asyncio.Future[None]]:
    """Polls handed to the producer (one reply each, ending at these offsets)."""
    acks: list[asyncio.Future[None]] = []
    for offset in offsets:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        r._pending.append(_InFlight({"tp": offset}, [ack], 1, 0.0))
        acks.append(ack)
    r._produced.set()
    return acks


async def settle() -> None:
    """Let the committer run until it waits again."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_commits_follow_acks_in_poll_order(committing: KafkaRunner) -> None:
    r = committing
    ack1, ack2, ack3 = queue(r, 10, 20, 30)
    # The second poll is acknowledged first: nothing may be committed
    # before the first is.
    ack2.set_result([])
    await settle()
    assert r._consumer.commits == []
    ack1.set_result([])
    await settle()
    # One commit for both acknowledged polls, none past the third.
    assert r._consumer.commits == [{"tp": 20}]
    ack3.set_result([])
    await settle()
    assert r._consumer.commits == [{"tp": 20}, {"tp": 30}]
    assert not r._pending


async def test_a_failed_ack_is_handed_to_the_loop_and_nothing_after_it_commits(
    committing: KafkaRunner,
) -> None:
    r = committing
    ack1, ack2 = queue(r, 10, 20)
    ack2.set_result([])
    ack1.set_exception(RuntimeError("broker said no"))
    await settle()
    assert r._consumer.commits == []
    with pytest.raises(RuntimeError, match="broker said no"):
        r._raise_failure()
    r._raise_failure()  # handed over once


async def test_no_commit_gets_past_a_failed_poll_not_even_a_drain(
    committing: KafkaRunner,
) -> None:
    r = committing
    ack1, ack2, ack3 = queue(r, 10, 20, 30)
    ack2.set_exception(RuntimeError("record too large"))
    ack3.set_result([])
    ack1.set_result([])
    await settle()
    # The first poll is committed; the failed one stays first in line.
    assert r._consumer.commits == [{"tp": 10}]
    assert r._pending[0].offsets == {"tp": 20}
    # A rebalance or shutdown drain must not commit the third poll.
    with pytest.raises(RuntimeError, match="record too large"):
        await r._drain()
    assert r._consumer.commits == [{"tp": 10}]


async def test_a_failed_rewind_stops_the_loop_until_a_rewind_succeeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_sleep = asyncio.sleep

    async def no_wait(_: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr("consumers.runner.asyncio.sleep", no_wait)
    r = runner()
    r._consumer = FakeConsumer()
    r._consumer.committed_fails = True
    await r._recover("produce", RuntimeError("broker down"))
    assert r._consumer.seeks == []
    with pytest.raises(RuntimeError, match="coordinator not available"):
        r._raise_failure()  # the next step rewinds again
    r._consumer.committed_fails = False
    await r._recover("loop", RuntimeError("again"))
    assert r._consumer.seeks == [("tp", 0)]
    r._raise_failure()  # nothing left to raise
