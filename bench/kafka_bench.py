"""Kafka figures: sustained throughput of the runner, request->reply latency.

Throughput: N requests are published first; then the standalone runners
start, and the clock runs from the moment every runner owns its partitions
until every reply is in the reply topic (acknowledged) and the group's
committed offsets reach the end of every request partition; requests
committed before that moment are not counted.

Latency and live load: this module run as its own process (`python -m
bench.kafka_bench latency ...`) publishes at a constant rate while the
runners consume, and reads the replies; a reply's latency runs from its
request's *scheduled* send time to its receipt, and every request is
accounted for by its correlation id (`ReplyTally`). This client is
librdkafka's (`confluent_kafka`), the lightest on the cores it shares with
what it measures, as vegeta is for REST.

The floor: `python -m bench.kafka_bench echo ...` is a consumer that answers
every request at once, with no scoring (idempotent producer, acks=all,
offsets committed once the replies are acknowledged). The same client
against it gives the latency of the broker, aiokafka and the client with no
scoring, as the echo drives them: the baseline of the live producer's
latency. It is simpler than the runner, not a copy of its Kafka side: one
`send` per reply, each poll's acks awaited before the next poll, plain
asyncio (the runner sends a batch per partition, keeps polls in flight and
runs on uvloop). So its CPU per record is higher than the runner's Kafka
side, and is not the runner's cost less scoring (the figures are in
bench/README.md, "The echo floor at 20,000 msg/s").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import threading
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


_ASSIGNED = re.compile(
    r"event=partitions_assigned instance=\S+ partitions=\[([\d, ]*)\]"
)


def assignment_complete(logs: Sequence[str], partitions: int) -> bool:
    """True when the runners' latest assignments cover every partition once.

    `logs` holds each runner's log. While the group rebalances, a runner's
    latest line still names its old partitions, so they overlap or fall short.
    """
    owned: list[int] = []
    for text in logs:
        found = _ASSIGNED.findall(text)
        if not found:
            return False
        owned += [int(p) for p in found[-1].split(",") if p.strip()]
    return sorted(owned) == list(range(partitions))


async def watch_completion(
    bootstrap: str,
    request_topic: str,
    reply_topic: str,
    group: str,
    expected_replies: int,
    ready: Callable[[], bool],
    timeout_s: float,
) -> dict[str, float]:
    """Poll (every 50 ms) until replies and committed offsets are complete.

    Returns wall-clock times (time.time()) of the moment `ready()` first held
    (every runner owns its partitions) and of completion, and the requests
    already committed when it held: with several runners the first may start
    before the others join, and what it did alone is not counted.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    t_ready: float | None = None
    committed_at_ready = 0
    try:
        request_ends = await _end_offsets(consumer, request_topic)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = time.time()
            if t_ready is None and ready():
                t_ready = now
                committed_at_ready = sum(
                    (await _committed(admin, group, request_topic)).values()
                )
            replies = sum((await _end_offsets(consumer, reply_topic)).values())
            if t_ready is not None and replies >= expected_replies:
                committed = await _committed(admin, group, request_topic)
                if all(committed.get(p, -1) >= end for p, end in request_ends.items()):
                    return {
                        "ready_at": t_ready,
                        "done_at": time.time(),
                        "replies": replies,
                        "committed_at_ready": committed_at_ready,
                    }
            await asyncio.sleep(0.05)
        raise TimeoutError(f"runners did not finish within {timeout_s:.0f}s")
    finally:
        await consumer.stop()
        await admin.close()


# -- the floor: an echo consumer, a separate process -------------------------


async def echo(
    bootstrap: str, request_topic: str, reply_topic: str, group: str
) -> None:
    """Answer each request at once (no scoring) until killed; see the module doc."""
    from aiokafka.abc import ConsumerRebalanceListener

    class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        async def on_partitions_assigned(self, assigned: Any) -> None:
            # The runner's log line: `assignment_complete` reads it.
            owned = ", ".join(str(tp.partition) for tp in sorted(assigned))
            sys.stdout.write(
                f"event=partitions_assigned instance=echo partitions=[{owned}]\n"
            )
            sys.stdout.flush()

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    consumer.subscribe([request_topic], listener=_Assigned())
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True
    )
    await consumer.start()
    await producer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            acks = [
                await producer.send(
                    reply_topic,
                    b'{"churn_probability": 0.5}',
                    key=r.key,
                    headers=list(r.headers or ()),
                )
                for records in batch.values()
                for r in records
            ]
            if acks:
                await asyncio.gather(*acks)
                await consumer.commit(
                    {tp: records[-1].offset + 1 for tp, records in batch.items()}
                )
    finally:
        await producer.stop()
        await consumer.stop()


# -- latency: a separate process -------------------------------------------


class ReplyTally:
    """The replies of one latency run, by correlation id (`<run>:<index>`).

    The first reply to a request sets its receipt time; another is a
    duplicate; a reply carrying an error is counted apart (and still
    answers its request). Replies of other runs, or without a correlation
    id of this run, are not this run's and are ignored.
    """

    def __init__(self, run: str, n: int) -> None:
        self.run = run
        #: Receipt time (time.monotonic()) of each request's first reply.
        self.received = np.full(n, np.nan)
        self.duplicates = 0
        self.errors = 0
        self.remaining = n

    def add(
        self, correlation_id: str | bytes | None, value: bytes | None, now: float
    ) -> None:
        """Count one reply received at `now`."""
        if isinstance(correlation_id, bytes):
            correlation_id = correlation_id.decode(errors="replace")
        tag, _, index = (correlation_id or "").partition(":")
        ours = tag == self.run and index.isascii() and index.isdigit()
        if not ours or int(index) >= len(self.received):
            return
        i = int(index)
        if not np.isnan(self.received[i]):
            self.duplicates += 1
            return
        self.received[i] = now
        self.remaining -= 1
        if b'"error"' in (value or b""):
            self.errors += 1

    def counts(self) -> dict[str, int]:
        """Replied (first replies), error replies, missing (lost), duplicates."""
        replied = len(self.received) - self.remaining
        return {
            "replied": replied,
            "error_replies": self.errors,
            "missing": len(self.received) - replied,
            "duplicates": self.duplicates,
        }


def latency(
    bootstrap: str,
    request_topic: str,
    reply_topic: str,
    customer_ids: Sequence[str],
    rate: int,
    duration_s: float,
    drain_s: float = 30,
    linger_ms: int = 0,
) -> dict[str, Any]:
    """A live producer: publish at `rate` msg/s for `duration_s`, read the replies.

    Every request carries its own correlation id (`<run>:<index>`), so each is
    accounted for: replied (score or error, counted apart), missing (lost) or
    answered more than once (duplicates). Latency runs from a request's
    *scheduled* send time to its reply's receipt, so a producer that falls
    behind shows in the latency, not as a lower rate. `linger_ms` batches the
    producer's sends (what a producer at thousands of msg/s does), and counts
    in the latency.

    The client is librdkafka (`confluent_kafka`), not aiokafka: it shares
    the 2 cores with what it measures, and in pure Python it took 44 % of a
    core at 5,000 msg/s, against 24 % (the commit that made the switch has
    the measurement). Requests are keyed and partitioned as a Java
    client does (murmur2), like the runner's replies.
    """
    from confluent_kafka import Consumer, Producer, TopicPartition

    run = uuid.uuid4().hex[:8]
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-latency-{run}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": linger_ms,
            "batch.size": 256 * 1024,
            "partitioner": "murmur2_random",
            # Callbacks for failures only: not one Python call per request.
            "delivery.report.only.error": True,
        }
    )
    n = int(rate * duration_s)
    tally = ReplyTally(run, n)
    failed_sends = 0
    stop = threading.Event()
    # Read from the replies' current ends, fixed before the first send: a
    # reply written before the reader's position is known would be skipped.
    parts = consumer.list_topics(reply_topic, timeout=10).topics[reply_topic]
    consumer.assign(
        [
            TopicPartition(
                reply_topic,
                p,
                consumer.get_watermark_offsets(
                    TopicPartition(reply_topic, p), timeout=10
                )[1],
            )
            for p in sorted(parts.partitions)
        ]
    )

    read_errors = 0
    crashed: list[BaseException] = []

    def read() -> None:
        try:
            follow()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            crashed.append(exc)

    def follow() -> None:
        nonlocal read_errors
        while tally.remaining and not stop.is_set():
            first = consumer.poll(0.1)
            if first is None:
                continue
            # The rest of what was fetched, without waiting for more.
            records = [first, *consumer.consume(num_messages=10_000, timeout=0)]
            now = time.monotonic()
            for r in records:
                if r.error() is not None:
                    read_errors += 1
                    continue
                cid = dict(r.headers() or ()).get("correlation_id")
                tally.add(cid, r.value(), now)

    def delivered(err: Any, _msg: Any) -> None:
        nonlocal failed_sends
        if err is not None:
            failed_sends += 1

    reader = threading.Thread(target=read, name="replies", daemon=True)
    # The request topic's metadata, before the clock: not in the first latencies.
    producer.list_topics(request_topic, timeout=10)
    try:
        reader.start()
        cpu0 = _cpu()
        t0 = time.monotonic() + 0.1
        due = t0 + np.arange(n) / rate
        send_lag = np.zeros(n)
        i = 0
        while i < n and not crashed:
            now = time.monotonic()
            if now < due[i]:
                time.sleep(due[i] - now)
                continue
            # Everything due by now goes out at once.
            upto = min(n, max(i + 1, int((now - t0) * rate) + 1))
            for j in range(i, upto):
                cid = customer_ids[j % len(customer_ids)].encode()
                send_lag[j] = time.monotonic() - due[j]
                _produce(
                    producer,
                    request_topic,
                    b'{"customer_id": "%s"}' % cid,
                    cid,
                    f"{run}:{j}".encode(),
                    delivered,
                )
            producer.poll(0)
            i = upto
        sent_s = time.monotonic() - t0
        if producer.flush(drain_s):
            # Not acknowledged in time: purged, each counted failed by its
            # callback (it may still have reached the broker and be answered).
            producer.purge()
            producer.poll(0)
        reader.join(drain_s)
        cpu = _cpu() - cpu0
        wall = time.monotonic() - t0
    finally:
        stop.set()
        reader.join(5)
        consumer.close()
    if crashed:
        raise RuntimeError("the reply reader failed") from crashed[0]
    got = ~np.isnan(tally.received)
    lat = (tally.received[got] - due[got]) * 1000
    from_send = lat - send_lag[got] * 1000
    return {
        "rate": rate,
        "duration_s": duration_s,
        "linger_ms": linger_ms,
        "client": "confluent-kafka (librdkafka)",
        "sent": n,
        "send_rate": round(n / sent_s, 1) if sent_s > 0 else None,
        "failed_sends": failed_sends,
        **tally.counts(),
        "read_errors": read_errors,
        "latency_ms": _ms(lat),
        # From the actual send (the client's own stalls left out).
        "latency_from_send_ms": _ms(from_send),
        "send_lag_ms": _ms(send_lag * 1000),
        "client_cpu_pct": round(100 * cpu / wall, 1),
    }


def _produce(
    producer: Any,
    topic: str,
    value: bytes,
    key: bytes,
    correlation_id: bytes,
    delivered: Callable[[Any, Any], None],
) -> None:
    """Queue one request; a full local queue is served (acks) and tried again."""
    while True:
        try:
            producer.produce(
                topic,
                value,
                key,
                headers=[("correlation_id", correlation_id)],
                on_delivery=delivered,
            )
            return
        except BufferError:
            producer.poll(0.01)


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
    lat.add_argument(
        "--linger-ms", type=int, default=0, help="producer batching (0: none)"
    )
    lat.add_argument("--out", type=Path, required=True)
    floor = sub.add_parser("echo", help="answer every request at once (the floor)")
    floor.add_argument("--bootstrap", required=True)
    floor.add_argument("--request-topic", required=True)
    floor.add_argument("--reply-topic", required=True)
    floor.add_argument("--group", required=True)
    args = parser.parse_args(argv)
    if args.command == "echo":
        asyncio.run(
            echo(args.bootstrap, args.request_topic, args.reply_topic, args.group)
        )
        return
    ids = [x for x in args.ids.read_text().splitlines() if x]
    result = latency(
        args.bootstrap,
        args.request_topic,
        args.reply_topic,
        ids,
        args.rate,
        args.duration,
        linger_ms=args.linger_ms,
    )
    args.out.write_text(json.dumps(result, indent=2))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
