"""Producing a poll's records: one batch per partition, refused replies dead-lettered.

Records go to the partition aiokafka's `DefaultPartitioner` picks (murmur2 of
the key, as Java clients do), in order; one `send_batch` per partition instead
of a `send` per record halves the producer's CPU per record.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from consumers import handler
from consumers.reply_topics import ReplyTopics, undeliverable
from predictflow import metrics

log = logging.getLogger("predictflow.kafka")


@functools.cache
def _partitioner() -> Any:
    # aiokafka is imported when the runner first produces, not with the module.
    from aiokafka.partitioner import DefaultPartitioner

    return DefaultPartitioner()


@functools.lru_cache(maxsize=65_536)
def _keyed(key: bytes, partitions: tuple[int, ...]) -> int:
    # Remembered: reply keys (customer ids) recur, and the partitioner's murmur2
    # is pure Python, a measurable share of a runner's CPU per record (the
    # commit that introduced this function has the measurement).
    return int(_partitioner()(key, partitions, partitions))


@functools.cache
def _partition_counts() -> metrics.CacheCounts:
    return metrics.CacheCounts("reply_partition", _keyed)


def partition(
    key: bytes | None, partitions: Sequence[int], available: Sequence[int]
) -> int:
    """The partition the producer's `DefaultPartitioner` picks for `key`.

    `partitions` is every partition of the topic, sorted; a record without a
    key goes to one of `available` (those with a leader), else any.
    """
    if key is None:
        return int(_partitioner()(None, list(partitions), list(available)))
    return _keyed(key, tuple(partitions))


@dataclass(frozen=True)
class SentBatch:
    """One batch handed to the producer: its records, and the broker's ack."""

    records: list[handler.Outgoing]
    ack: asyncio.Future[Any]


async def send_by_partition(
    producer: Any, outgoing: Sequence[handler.Outgoing]
) -> list[SentBatch]:
    """Hand records to an aiokafka producer: one batch per partition, in order.

    A batch that fills up is sent and another started.
    """
    batches: dict[tuple[str, int], Any] = {}
    members: dict[tuple[str, int], list[handler.Outgoing]] = {}
    sent: list[SentBatch] = []
    partitions: dict[str, tuple[tuple[int, ...], list[int]]] = {}
    for o in outgoing:
        if o.topic not in partitions:
            every = tuple(sorted(await producer.partitions_for(o.topic)))
            available = producer.client.cluster.available_partitions_for_topic(o.topic)
            partitions[o.topic] = (every, sorted(available or ()))
        parts, available = partitions[o.topic]
        tp = (o.topic, partition(o.key, parts, available))
        batch = batches.get(tp)
        if batch is None:
            batch = batches[tp] = producer.create_batch()
            members[tp] = []
        if (
            batch.append(key=o.key, value=o.value, timestamp=None, headers=o.headers)
            is None
        ):
            ack = await producer.send_batch(batch, tp[0], partition=tp[1])
            sent.append(SentBatch(members[tp], ack))
            batch = batches[tp] = producer.create_batch()
            members[tp] = []
            batch.append(key=o.key, value=o.value, timestamp=None, headers=o.headers)
        members[tp].append(o)
    for tp, batch in batches.items():
        ack = await producer.send_batch(batch, tp[0], partition=tp[1])
        sent.append(SentBatch(members[tp], ack))
    _partition_counts().update()
    return sent


class Delivery:
    """Produces records by partition; replies the broker refuses become dead letters.

    Replies refused for a reason of their own (topic not authorized or gone,
    record too large) are dead-lettered, and their topic remembered as refused
    in `reply_topics`; any other failure (timeout, broker down) is raised, for
    the runner to rewind. In exactly-once mode (`transactional`) a refused
    reply aborts the transaction (nothing more can be sent in it): the topic
    is remembered, so the redelivered poll dead-letters it.
    """

    def __init__(
        self, routes: handler.Routes, reply_topics: ReplyTopics, *, transactional: bool
    ) -> None:
        self.routes = routes
        self.reply_topics = reply_topics
        self.transactional = transactional

    async def send(
        self, producer: Any, outgoing: Sequence[handler.Outgoing]
    ) -> list[asyncio.Future[list[handler.Outgoing]]]:
        """One future per batch: its records as delivered, once acknowledged."""
        return [
            asyncio.ensure_future(self._deliver(producer, batch))
            for batch in await send_by_partition(producer, outgoing)
        ]

    async def _deliver(self, producer: Any, sent: SentBatch) -> list[handler.Outgoing]:
        records = sent.records
        try:
            await sent.ack
            return records
        except Exception as exc:
            reason = undeliverable(exc)
            first = records[0]
            if reason is None or first.kind == "dead_letter":
                raise
            message = (
                f"the reply could not be produced to {first.topic!r}: "
                f"{type(exc).__name__}"
            )
            # Replies are small: one too large means the topic's own limit is.
            self.reply_topics.learn(first.topic, reason, message)
            log.warning(
                "event=reply_refused topic=%s reason=%s error=%s",
                first.topic,
                reason,
                type(exc).__name__,
            )
            if self.transactional:
                raise
        routes = self.routes
        dead = [
            handler.dead_letter(
                o.source, reason, message, routes.dlq, routes.max_message_bytes
            )
            for o in records
            if o.source is not None
        ]
        for o in dead:
            log_dead_letter(o)
        return [
            o
            for batch in await asyncio.gather(*await self.send(producer, dead))
            for o in batch
        ]


def log_dead_letter(o: handler.Outgoing) -> None:
    """One log line per dead letter, naming the record it replaces."""
    source = o.source
    log.warning(
        "event=dead_lettered reason=%s correlation_id=%s source=%s/%s/%s",
        o.reason,
        o.correlation_id,
        source.topic if source else None,
        source.partition if source else None,
        source.offset if source else None,
    )
