"""Async helpers for the Kafka tests: publish requests, collect replies."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from predictflow.settings import KafkaSettings
from predictflow.topics import ensure_topics


@dataclass(frozen=True)
class Topics:
    """Topic and group names of one test, so tests never see each other's records."""

    request: str
    reply: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls, name: str, bootstrap: str) -> Topics:
        """New names, with the topics created the way the runner creates them."""
        tag = f"{name}-{uuid.uuid4().hex[:8]}"
        topics = cls(f"req-{tag}", f"rep-{tag}", f"dlq-{tag}", f"grp-{tag}")
        settings = KafkaSettings(
            request_topic=topics.request, reply_topic=topics.reply, dlq_topic=topics.dlq
        )
        asyncio.run(ensure_topics(settings, bootstrap))
        return topics

    def env(self, bootstrap: str) -> dict[str, str]:
        return {
            "PREDICTFLOW_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "PREDICTFLOW_KAFKA__REQUEST_TOPIC": self.request,
            "PREDICTFLOW_KAFKA__REPLY_TOPIC": self.reply,
            "PREDICTFLOW_KAFKA__DLQ_TOPIC": self.dlq,
            "PREDICTFLOW_KAFKA__GROUP_ID": self.group,
            # Transactional ids are broker-wide: one prefix per test, so runners
            # of other tests (or other suites on a shared broker) never fence them.
            "PREDICTFLOW_KAFKA__TRANSACTIONAL_ID": f"txn-{self.group}",
            "PREDICTFLOW_KAFKA__METRICS_PORT": "0",
        }


@dataclass
class Sent:
    """What a test published: correlation id -> (customer id, partition, offset)."""

    records: dict[str, tuple[str, int, int]] = field(default_factory=dict)


async def publish(
    bootstrap: str,
    topic: str,
    customer_ids: list[str],
    sent: Sent | None = None,
    rate: float | None = None,
) -> Sent:
    """Publish one valid request per customer id (at `rate` per second if given)."""
    sent = sent or Sent()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        start = time.monotonic()
        futures = []
        for i, cid in enumerate(customer_ids):
            correlation_id = uuid.uuid4().hex
            fut = await producer.send(
                topic,
                json.dumps({"customer_id": cid}).encode(),
                key=cid.encode(),
                headers=[("correlation_id", correlation_id.encode())],
            )
            futures.append((correlation_id, cid, fut))
            if rate is not None:
                due = start + (i + 1) / rate
                if (pause := due - time.monotonic()) > 0:
                    await asyncio.sleep(pause)
        for correlation_id, cid, fut in futures:
            md = await fut
            sent.records[correlation_id] = (cid, md.partition, md.offset)
    finally:
        await producer.stop()
    return sent


async def partitions_of(bootstrap: str, topic: str) -> set[int]:
    """The partitions of a topic (waits for its metadata)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        return set(await producer.partitions_for(topic))
    finally:
        await producer.stop()


async def read_all(
    bootstrap: str,
    topic: str,
    *,
    until: set[str] | None = None,
    wait_s: float = 120,
    read_committed: bool = False,
    settle: float = 0.0,
) -> dict[str, list[tuple[dict[str, Any], dict[str, bytes]]]]:
    """Every record of `topic` from the start, grouped by correlation id.

    Stops once every id in `until` was seen (then reads `settle` seconds more,
    to catch duplicates), or after `wait_s` seconds.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
    )
    await consumer.start()
    seen: dict[str, list[tuple[dict[str, Any], dict[str, bytes]]]] = defaultdict(list)
    try:
        partitions = await partitions_of(bootstrap, topic)
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + wait_s
        settled_at: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    headers = dict(r.headers or ())
                    cid = headers.get("correlation_id", b"").decode()
                    try:
                        body = json.loads(r.value) if r.value else {}
                    except ValueError:
                        body = {"_raw": r.value}
                    seen[cid].append((body, headers))
            if until is not None and until <= seen.keys():
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= settle:
                    break
    finally:
        await consumer.stop()
    return dict(seen)


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The consumer group's committed offset of each partition (-1: none)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = await partitions_of(bootstrap, topic)
        result = {}
        for p in partitions:
            committed = await consumer.committed(TopicPartition(topic, p))
            result[p] = -1 if committed is None else committed
        return result
    finally:
        await consumer.stop()
