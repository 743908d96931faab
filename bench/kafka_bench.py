"""Kafka figures: sustained throughput of the runner, request->reply latency.

Throughput: N requests are published first; then the standalone runners
start, and the clock runs from the moment every runner owns its partitions
until every reply is in the reply topic (acknowledged) and the group's
committed offsets reach the end of every request partition; requests
committed before that moment are not counted.

Latency and live load: `tools/kafka-load`, a compiled client (Go,
franz-go) run as its own process, publishes at a constant rate while the
runners consume, and reads the replies (`live`); a reply's latency runs
from its request's *scheduled* send time to its receipt, and every request
is accounted for by its correlation id (`account`, `ReplyTally`). It is
compiled for the reason vegeta is for REST: it shares the cores with what
it measures.

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
import subprocess
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


def echo_command(
    bootstrap: str, request_topic: str, reply_topic: str, group: str
) -> tuple[str, ...]:
    """The Python arguments that run `echo` as a process of its own."""
    return (
        "-m",
        "bench.kafka_bench",
        "echo",
        *_flags(
            bootstrap=bootstrap,
            request_topic=request_topic,
            reply_topic=reply_topic,
            group=group,
        ),
    )


def _flags(**values: object) -> list[str]:
    """Command-line options: `--name value` for each (underscores as dashes)."""
    return [
        part
        for name, value in values.items()
        for part in (f"--{name.replace('_', '-')}", str(value))
    ]


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

    # From the start of its (fresh) topic: at the default, latest, requests
    # sent before a partition's position is first looked up were skipped,
    # and counted lost by the client.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
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
        #: Receipt time of each request's first reply (NaN: none), in
        #: seconds from the run's start.
        self.received = np.full(n, np.nan)
        self.duplicates = 0
        self.errors = 0
        self.remaining = n

    def add_reply(
        self, correlation_id: str | bytes | None, now: float, *, error: bool
    ) -> None:
        """Count one reply received at `now`; `error`: it carries an error."""
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
        if error:
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


def live(
    kafka_load: str,
    bootstrap: str,
    request_topic: str,
    reply_topic: str,
    ids: Path,
    rate: int,
    duration_s: float,
    out: Path,
    drain_s: float = 30,
    linger_ms: int = 0,
) -> dict[str, Any]:
    """A live producer: publish at `rate` msg/s for `duration_s`, read the replies.

    The client is `tools/kafka-load` (Go, franz-go), compiled because it
    shares the 2 cores with what it measures: the librdkafka client it
    replaced took much more CPU at the live rates, every core-second of it
    taken from the runners (bench/README.md has the measurements). It
    sends on an open-loop schedule and writes what happened; the counting
    is `account`'s. `out` is the prefix of its files. A client that fails
    (no broker, a missing topic) raises: the section shows as not met.
    """
    done = subprocess.run(
        [
            kafka_load,
            *_flags(
                bootstrap=bootstrap,
                request_topic=request_topic,
                reply_topic=reply_topic,
                ids=ids,
                rate=rate,
                duration=duration_s,
                linger_ms=linger_ms,
                drain=drain_s,
                out=out,
            ),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=duration_s + drain_s + 120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"kafka-load exited {done.returncode}: {done.stderr[-2000:].strip()}"
        )
    return {"duration_s": duration_s, "linger_ms": linger_ms, **account(out)}


def account(out: Path) -> dict[str, Any]:
    """Every request of a `tools/kafka-load` run, by its correlation id.

    Replied (the first reply; error replies counted apart), missing (lost)
    or answered more than once (duplicates), with `ReplyTally`. A reply's
    latency runs from its request's *scheduled* send time (request i at
    i/rate after the start) to its receipt, so a producer that falls behind
    shows in the latency, not as a lower rate.
    """
    summary = json.loads(Path(f"{out}.json").read_text())
    rate, n = int(summary["rate"]), int(summary["sent"])
    sends = np.fromfile(f"{out}.sends", dtype="<i8")
    if len(sends) != n:
        raise RuntimeError(f"kafka-load wrote {len(sends)} send times for {n} requests")
    tally = ReplyTally(summary["run"], n)
    for line in Path(f"{out}.replies").read_bytes().splitlines():
        cid, at, error = line.split(b"\t")
        tally.add_reply(cid, int(at) / 1e9, error=error == b"1")
    due = np.arange(n) / rate
    got = ~np.isnan(tally.received)
    lat = (tally.received[got] - due[got]) * 1000
    sent = sends >= 0
    send_lag = (sends / 1e9 - due) * 1000
    send_lag[~sent] = np.nan
    from_send = lat - send_lag[got]
    wall = float(summary["wall_seconds"])
    send_s = float(summary["send_seconds"])
    return {
        "rate": rate,
        "client": summary["client"],
        "sent": n,
        "send_rate": round(n / send_s, 1) if send_s > 0 else None,
        "failed_sends": int(summary["failed_sends"]) + int(n - sent.sum()),
        **tally.counts(),
        "read_errors": int(summary["read_errors"]),
        "latency_ms": _ms(lat),
        # From the actual send (the client's own stalls left out).
        "latency_from_send_ms": _ms(from_send[~np.isnan(from_send)]),
        "send_lag_ms": _ms(send_lag[sent]),
        "client_cpu_pct": round(100 * float(summary["cpu_seconds"]) / wall, 1)
        if wall > 0
        else None,
    }


def _ms(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    return {
        "p50": round(float(np.percentile(values, 50)), 2),
        "p99": round(float(np.percentile(values, 99)), 2),
        "max": round(float(values.max()), 2),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.kafka_bench")
    sub = parser.add_subparsers(dest="command", required=True)
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


if __name__ == "__main__":
    main()
