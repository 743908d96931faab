"""The runner's Kafka clients: how they connect, rewind, restart and close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from consumers.security import client_security
from predictflow.settings import KafkaSettings

log = logging.getLogger("predictflow.kafka")

#: Longest wait for the committed offsets when rewinding.
REWIND_TIMEOUT_SECONDS = 15.0


def new_consumer(settings: KafkaSettings, instance: str) -> Any:
    """The group member: manual commits, committed records only."""
    from aiokafka import AIOKafkaConsumer

    s = settings
    return AIOKafkaConsumer(
        bootstrap_servers=s.bootstrap_servers,
        group_id=s.group_id,
        client_id=f"predictflow-{instance}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=s.max_batch,
        fetch_max_wait_ms=s.fetch_max_wait_ms,
        fetch_min_bytes=s.fetch_min_bytes,
        session_timeout_ms=s.session_timeout_ms,
        heartbeat_interval_ms=s.heartbeat_interval_ms,
        **client_security(s),
    )


def new_producer(settings: KafkaSettings, instance: str) -> Any:
    """The idempotent producer; transactional (per instance) in exactly-once mode."""
    from aiokafka import AIOKafkaProducer

    s = settings
    producer_args: dict[str, Any] = {
        "bootstrap_servers": s.bootstrap_servers,
        "client_id": f"predictflow-{instance}",
        "acks": "all",
        "enable_idempotence": True,
        # The runner batches a poll's replies itself (`send_by_partition`):
        # no reason to hold a batch back.
        "linger_ms": 0,
        "max_request_size": s.max_message_bytes + 64 * 1024,
        "transaction_timeout_ms": s.transaction_timeout_ms,
        **client_security(s),
    }
    if s.exactly_once:
        producer_args["transactional_id"] = f"{s.transactional_id}-{instance}"
    return AIOKafkaProducer(**producer_args)


async def fresh_producer(old: Any, settings: KafkaSettings, instance: str) -> Any:
    """Stop `old` (if any) and start a new producer under the same transactional id.

    A transactional producer whose transaction failed on a refused record does
    not begin another (aiokafka); the new one also fences the old.
    """
    if old is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.stop(), 5)
    producer = new_producer(settings, instance)
    try:
        await asyncio.wait_for(producer.start(), 30)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 5)
        raise
    return producer


async def rewind(consumer: Any) -> None:
    """Seek every assigned partition to its committed offset (none: the beginning).

    Raises when the committed offsets cannot be read in time.
    """
    async with asyncio.timeout(REWIND_TIMEOUT_SECONDS):
        for tp in consumer.assignment():
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)


async def close(*clients: Any) -> None:
    """Stop each client; a broker that does not answer must not hold up a shutdown."""
    for client in clients:
        if client is not None:
            try:
                await asyncio.wait_for(client.stop(), 5)
            except Exception as exc:  # noqa: BLE001 - closing anyway
                log.warning("event=kafka_close_failed error=%r", exc)


def fenced(exc: BaseException) -> bool:
    """True when a newer producer with this transactional id fenced this one."""
    from aiokafka.errors import ProducerFenced

    return isinstance(exc, ProducerFenced)
