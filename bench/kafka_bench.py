"""Kafka figures: sustained throughput of the runner, request->reply latency.

Throughput: N requests are published first; then the standalone runner starts,
and the clock runs from its partition assignment until every reply is in the
reply topic (acknowledged) and the group's committed offsets reach the end of
every request partition.

Latency: this module run as its own process (`python -m bench.kafka_bench
latency ...`) publishes at a constant rate and reads the replies; a reply's
latency runs from its request's *scheduled* send time to its receipt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from predictflow.settings import KafkaSettings


async def publish_all(bootstrap: str, topic: str, customer_ids: Sequence[str]) -> float:
    """Publish one request per id (keyed by customer id), as fast as acks allow."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=512 * 1024,
    )
    await producer.start()
    started = time.monotonic()
    try:
        futures = []
        for cid in customer_ids:
            futures.append(
                await producer.send(
                    topic,
                    json.dumps({"customer_id": cid}).encode(),
                    key=cid.encode(),
                    headers=[("correlation_id", uuid.uuid4().hex.encode())],
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.monotonic() - started


#: Partitions of the request and reply topics, as the runner creates them.
PARTITIONS = KafkaSettings().request_partitions


async def _end_offsets(consumer: AIOKafkaConsumer, topic: str) -> dict[int, int]:
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    ends = await consumer.end_offsets(tps)
    return {tp.partition: off for tp, off in ends.items()}


async def _committed(
    admin: AIOKafkaAdminClient, group: str, topic: str
) -> dict[int, int]:
    offsets = await admin.list_consumer_group_offsets(group)
    return {
        tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic
    }


async def watch_completion(
    bootstrap: str,
    request_topic: str,
    reply_topic: str,
    group: str,
    expected_replies: int,
    assigned: Callable[[], bool],
    timeout_s: float,
) -> dict[str, float]:
    """Poll (every 50 ms) until replies and committed offsets are complete.

    Returns wall-clock times (time.time()) of the runner's partition
    assignment (as seen in its log) and of completion.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    t_assigned: float | None = None
    try:
        request_ends = await _end_offsets(consumer, request_topic)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = time.time()
            if t_assigned is None and assigned():
                t_assigned = now
            replies = sum((await _end_offsets(consumer, reply_topic)).values())
            if replies >= expected_replies:
                committed = await _committed(admin, group, request_topic)
                if all(committed.get(p, -1) >= end for p, end in request_ends.items()):
                    return {
                        "assigned_at": t_assigned or now,
                        "done_at": time.time(),
                        "replies": replies,
                    }
            await asyncio.sleep(0.05)
        raise TimeoutError(f"runner did not finish within {timeout_s:.0f}s")
    finally:
        await consumer.stop()
        await admin.close()


async def first_reply_time(bootstrap: str, reply_topic: str) -> float:
    """Earliest reply record timestamp (the runner's send time), time.time()."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await _end_offsets(consumer, reply_topic)
        tps = [TopicPartition(reply_topic, p) for p, end in ends.items() if end > 0]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        first: dict[int, int] = {}
        deadline = time.monotonic() + 30
        while len(first) < len(tps) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=1)
            for tp, records in batch.items():
                if records and tp.partition not in first:
                    first[tp.partition] = records[0].timestamp
                    consumer.pause(tp)
        return min(first.values()) / 1000
    finally:
        await consumer.stop()


# -- latency: a separate process -------------------------------------------


async def latency(
    bootstrap: str,
    request_topic: str,
    reply_topic: str,
    customer_ids: Sequence[str],
    rate: int,
    duration_s: float,
    drain_s: float = 30,
) -> dict[str, Any]:
    """Publish at `rate` msg/s for `duration_s`; reply latency from schedule."""
    run = uuid.uuid4().hex[:8]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await consumer.start()
    await producer.start()
    n = int(rate * duration_s)
    due = np.zeros(n)
    received = np.full(n, np.nan)
    duplicates = 0
    try:
        ends = await _end_offsets(consumer, reply_topic)
        consumer.assign([TopicPartition(reply_topic, p) for p in ends])
        await consumer.seek_to_end()

        async def read() -> None:
            nonlocal duplicates
            while np.isnan(received).any():
                batch = await consumer.getmany(timeout_ms=100)
                now = time.monotonic()
                for records in batch.values():
                    for r in records:
                        cid = dict(r.headers or ()).get("correlation_id", b"").decode()
                        tag, _, index = cid.partition(":")
                        if tag != run:
                            continue
                        i = int(index)
                        if np.isnan(received[i]):
                            received[i] = now
                        else:
                            duplicates += 1

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.5)  # the reader's fetch is in place
        cpu0 = _cpu()
        t0 = time.monotonic() + 0.1
        send_lag = np.zeros(n)
        acks = []
        for i in range(n):
            due[i] = t0 + i / rate
            if (pause := due[i] - time.monotonic()) > 0:
                await asyncio.sleep(pause)
            send_lag[i] = time.monotonic() - due[i]
            cid = customer_ids[i % len(customer_ids)]
            acks.append(
                await producer.send(
                    request_topic,
                    json.dumps({"customer_id": cid}).encode(),
                    key=cid.encode(),
                    headers=[("correlation_id", f"{run}:{i}".encode())],
                )
            )
        await asyncio.gather(*acks)
        try:
            await asyncio.wait_for(reader, drain_s)
        except TimeoutError:
            pass
        cpu = _cpu() - cpu0
        wall = time.monotonic() - t0
    finally:
        await producer.stop()
        await consumer.stop()
    got = ~np.isnan(received)
    lat = (received[got] - due[got]) * 1000
    from_send = lat - send_lag[got] * 1000
    return {
        "rate": rate,
        "duration_s": duration_s,
        "sent": n,
        "replied": int(got.sum()),
        "missing": int(n - got.sum()),
        "duplicates": duplicates,
        "latency_ms": _ms(lat),
        # From the actual send (the client's own stalls left out).
        "latency_from_send_ms": _ms(from_send),
        "send_lag_ms": _ms(send_lag * 1000),
        "client_cpu_pct": round(100 * cpu / wall, 1),
    }


def _ms(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    return {
        "p50": round(float(np.percentile(values, 50)), 2),
        "p99": round(float(np.percentile(values, 99)), 2),
        "max": round(float(values.max()), 2),
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.kafka_bench")
    sub = parser.add_subparsers(dest="command", required=True)
    lat = sub.add_parser("latency", help="constant-rate request->reply latency")
    lat.add_argument("--bootstrap", required=True)
    lat.add_argument("--request-topic", required=True)
    lat.add_argument("--reply-topic", required=True)
    lat.add_argument("--ids", type=Path, required=True, help="customer ids, one a line")
    lat.add_argument("--rate", type=int, default=1000)
    lat.add_argument("--duration", type=float, default=30)
    lat.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    ids = [x for x in args.ids.read_text().splitlines() if x]
    result = asyncio.run(
        latency(
            args.bootstrap,
            args.request_topic,
            args.reply_topic,
            ids,
            args.rate,
            args.duration,
        )
    )
    args.out.write_text(json.dumps(result, indent=2))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
