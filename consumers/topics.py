"""The Kafka topics of the request/reply contract, created when missing."""

from __future__ import annotations

import logging

from consumers.security import client_security
from predictflow.settings import KafkaSettings

log = logging.getLogger("predictflow.kafka")


async def ensure_topics(settings: KafkaSettings, bootstrap: str) -> None:
    """Create the request, reply and dead-letter topics when missing.

    Needs the right to describe them (a topic the client may not see looks
    missing) and, for those missing, to create them. Where operators create
    topics, turn this off with `create_topics=false`.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="predictflow",
        **client_security(settings),
    )
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
            # Another client may have created it since we listed the topics.
            if code not in (0, TopicAlreadyExistsError.errno):
                raise RuntimeError(f"cannot create topic {topic}: error {code} {rest}")
            log.info("event=topic_created topic=%s", topic)
    finally:
        await admin.close()
