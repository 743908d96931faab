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
accounted for by its correlation id.

The floor: `python -m bench.kafka_bench echo ...` is a consumer that answers
every request at once, with no scoring, the way the runner does otherwise
(idempotent producer, acks=all, offsets committed once the replies are
acknowledged). The same client against it gives what the broker, aiokafka and
the client cost on this machine: the baseline of the live producer's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
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


async def latency(
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
    """
    run = uuid.uuid4().hex[:8]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
    )
    await consumer.start()
    await producer.start()
    n = int(rate * duration_s)
    due = np.zeros(n)
    received = np.full(n, np.nan)
    duplicates = errors = failed_sends = 0
    remaining = n
    try:
        ends = await _end_offsets(consumer, reply_topic)
        consumer.assign([TopicPartition(reply_topic, p) for p in ends])
        await consumer.seek_to_end()

        async def read() -> None:
            nonlocal duplicates, errors, remaining
            while remaining:
                batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
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
                            remaining -= 1
                            if b'"error"' in (r.value or b""):
                                errors += 1
                        else:
                            duplicates += 1

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.5)  # the reader's fetch is in place
        cpu0 = _cpu()
        t0 = time.monotonic() + 0.1
        send_lag = np.zeros(n)
        acks: list[asyncio.Future[Any]] = []
        for i in range(n):
            due[i] = t0 + i / rate
            if (pause := due[i] - time.monotonic()) > 0:
                await asyncio.sleep(pause)
            send_lag[i] = time.monotonic() - due[i]
            cid = customer_ids[i % len(customer_ids)]
            acks.append(
                await producer.send(
                    request_topic,
                    b'{"customer_id": "%s"}' % cid.encode(),
                    key=cid.encode(),
                    headers=[("correlation_id", f"{run}:{i}".encode())],
                )
            )
            if len(acks) >= 5_000:
                # Keep what is in flight only (bounded memory at any rate).
                failed_sends += sum(1 for f in acks if f.done() and f.exception())
                acks = [f for f in acks if not f.done()]
        sent_s = time.monotonic() - t0
        done = await asyncio.gather(*acks, return_exceptions=True)
        failed_sends += sum(isinstance(x, BaseException) for x in done)
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
        "linger_ms": linger_ms,
        "sent": n,
        "send_rate": round(n / sent_s, 1) if sent_s > 0 else None,
        "failed_sends": failed_sends,
        "replied": int(got.sum()),
        "error_replies": errors,
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
    result = asyncio.run(
        latency(
            args.bootstrap,
            args.request_topic,
            args.reply_topic,
            ids,
            args.rate,
            args.duration,
            linger_ms=args.linger_ms,
        )
    )
    args.out.write_text(json.dumps(result, indent=2))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
