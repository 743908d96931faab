"""One consumer-group member of the canary Kafka tests (`python -m
tests.canary_member`): it joins the group on the request topic, says every
assignment on stdout (one JSON line), and echoes each record to the reply
topic, committing after each poll's replies are acknowledged, as the runner
does (consumers/runner.py). Its group knobs are the ones under test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError


def _say(event: str, name: str, partitions: list[int]) -> None:
    line = {"t": time.time(), "event": event, "name": name, "partitions": partitions}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> None:
    """Consume, echo and commit until SIGTERM."""
    name = args.name

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            _say("revoked", name, [])

        async def on_partitions_assigned(self, assigned: Any) -> None:
            _say("assigned", name, sorted(tp.partition for tp in assigned))

    options: dict[str, Any] = {
        "session_timeout_ms": args.session_ms,
        "heartbeat_interval_ms": args.heartbeat_ms,
    }
    if args.static:
        options["group_instance_id"] = name
    if args.rebalance_ms:
        options["rebalance_timeout_ms"] = args.rebalance_ms
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        client_id=name,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
        **options,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", linger_ms=0
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    consumer.subscribe([args.topic], listener=Listener())
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            polled = await consumer.getmany(timeout_ms=100)
            acks = [
                await producer.send(
                    args.reply, value=r.value, key=r.key, headers=list(r.headers)
                )
                for records in polled.values()
                for r in records
            ]
            for ack in acks:
                await ack
            if acks:
                try:
                    await consumer.commit()
                except CommitFailedError:
                    # The group rebalanced under this poll: its records go
                    # to their new owner, which replies again (at least once).
                    continue
    finally:
        await consumer.stop()
        await producer.stop()
        _say("stopped", name, [])


def main() -> None:
    """Parse the member's settings and run it."""
    p = argparse.ArgumentParser()
    for flag in ("--bootstrap", "--topic", "--reply", "--group", "--name"):
        p.add_argument(flag, required=True)
    p.add_argument("--session-ms", type=int, default=10_000)
    p.add_argument("--heartbeat-ms", type=int, default=3000)
    p.add_argument("--rebalance-ms", type=int, default=0)
    p.add_argument("--static", action="store_true", help="group_instance_id=name")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
