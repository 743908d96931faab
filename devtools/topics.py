"""Fresh Kafka topic and group names for one test or benchmark run."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from consumers.topics import ensure_topics
from predictflow.settings import KafkaSettings


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
        asyncio.run(
            _wait_servable(
                bootstrap, [topics.request, topics.reply], settings.request_partitions
            )
        )
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


async def _wait_servable(bootstrap: str, names: list[str], partitions: int) -> None:
    """Until the broker answers offset requests on every partition of `names`.

    A topic just created can be unknown to its partitions' leader for a
    moment: a client that lists its offsets then is told it does not exist.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    parts = [TopicPartition(name, p) for name in names for p in range(partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    await consumer.end_offsets(parts)
                    return
                except KafkaError:
                    await asyncio.sleep(0.1)
    finally:
        await consumer.stop()
