"""The Kafka topics of the request/reply contract, created when missing."""

from __future__ import annotations

import logging

from predictflow.settings import KafkaSettings

log = logging.getLogger("predictflow.kafka")

# Kafka error code of CreateTopics when another client created it first.
_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(settings: KafkaSettings, bootstrap: str) -> None:
    """Create the request, reply and dead-letter topics when missing."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="predictflow")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = {
            settings.request_topic: settings.request_partitions,
            settings.reply_topic: settings.request_partitions,
            settings.dlq_topic: 1,
        }
        missing = [
            NewTopic(name, partitions, settings.replication_factor)
            for name, partitions in wanted.items()
            if name not in existing
        ]
        if not missing:
            return
        response = await admin.create_topics(missing)
        for topic, code, *rest in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"cannot create topic {topic}: error {code} {rest}")
            log.info("event=topic_created topic=%s", topic)
    finally:
        await admin.close()
