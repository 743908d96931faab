"""What the runner knows of reply topics: usable, missing or forbidden, for a while.

A request may name any allowed topic in its `reply_to` header (`handler.Routes`
checks the name). Whether that topic exists, and whether the runner may write
to it, only the broker knows. Asking it through the producer would wait up to
the producer's request timeout (40 s) for a topic that never comes, and the
producer would go on asking for it in every metadata refresh. So a topic the
producer does not already know is looked up once, in one metadata request for
every new topic of the poll, bounded by `metadata_timeout_ms`; the answer is
remembered for `topic_cache_seconds`. A produce that fails for a reason of the
topic (not authorized, gone) teaches the same table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from consumers.handler import DeadLetterReason

log = logging.getLogger("predictflow.kafka")

#: Most topics remembered (a producer may name many; each entry is small).
_MAX_REMEMBERED = 10_000

Refusal = tuple[DeadLetterReason, str]


def undeliverable(exc: BaseException) -> DeadLetterReason | None:
    """The dead-letter reason of a produce failure that is the record's own.

    None for everything else (timeouts, lost connections, a broker that is
    down): those are outages, retried by rewinding, never dead-lettered.
    """
    from aiokafka import errors

    if isinstance(exc, errors.TopicAuthorizationFailedError):
        return "reply_topic_forbidden"
    if isinstance(exc, errors.UnknownTopicOrPartitionError):
        return "reply_topic_missing"
    if isinstance(exc, errors.InvalidTopicError):
        return "reply_topic_invalid"
    if isinstance(
        exc,
        errors.MessageSizeTooLargeError
        | errors.RecordTooLargeError
        | errors.RecordListTooLargeError,
    ):
        return "record_too_large"
    return None


class ReplyTopics:
    """Remembers which reply topics can be written to, asking the broker rarely."""

    def __init__(self, metadata_timeout: float, remember_seconds: float) -> None:
        self.metadata_timeout = metadata_timeout
        self.remember_seconds = remember_seconds
        self._refused: dict[str, tuple[Refusal, float]] = {}

    def learn(self, topic: str, reason: DeadLetterReason, message: str) -> None:
        """Remember that `topic` cannot take replies (from a failed produce)."""
        if len(self._refused) >= _MAX_REMEMBERED:
            self._refused.clear()
        self._refused[topic] = ((reason, message), time.monotonic())

    def remembered(self, topic: str) -> Refusal | None:
        """The refusal of `topic` still remembered, if any."""
        entry = self._refused.get(topic)
        if entry is None:
            return None
        refusal, since = entry
        if time.monotonic() - since > self.remember_seconds:
            del self._refused[topic]
            return None
        return refusal

    async def refused(self, producer: Any, topics: Iterable[str]) -> dict[str, Refusal]:
        """The topics among `topics` that cannot take replies, and why.

        A topic the producer already has metadata for is usable; the others
        are looked up in one metadata request, bounded in time. A broker
        that does not answer in time is an outage, not a missing topic:
        it raises, and the poll is retried.
        """
        cluster = producer.client.cluster
        refused: dict[str, Refusal] = {}
        unknown: list[str] = []
        for topic in set(topics):
            if (refusal := self.remembered(topic)) is not None:
                refused[topic] = refusal
            elif cluster.partitions_for_topic(topic) is None:
                unknown.append(topic)
        if not unknown:
            return refused
        async with asyncio.timeout(self.metadata_timeout):
            metadata = await producer.client.fetch_all_metadata()
        for topic in unknown:
            if topic in metadata.unauthorized_topics:
                reason: DeadLetterReason = "reply_topic_forbidden"
                message = f"the runner may not write to reply topic {topic!r}"
            elif metadata.partitions_for_topic(topic):
                continue
            else:
                reason = "reply_topic_missing"
                message = f"reply topic {topic!r} does not exist"
            log.warning("event=reply_topic_refused topic=%s reason=%s", topic, reason)
            self.learn(topic, reason, message)
            refused[topic] = (reason, message)
        return refused
