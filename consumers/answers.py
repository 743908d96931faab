"""What a poll is answered: replies, error replies and dead letters, one per record.

Poison records and reply topics the broker refuses are dead-lettered; the
rest are scored in one `Scorer.score` call. A feature store that does not
answer is retried a few times, then the poll gets retryable error replies and
consumption pauses (`paused`) until a `probe` finds the store back, probed
with bounded exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from consumers import handler
from consumers.producer import log_dead_letter
from consumers.reply_topics import ReplyTopics
from predictflow import metrics
from predictflow.contract import ChurnRequest, ChurnResult
from predictflow.errors import FeatureStoreUnavailable
from predictflow.scoring import Scorer
from predictflow.settings import KafkaSettings

log = logging.getLogger("predictflow.kafka")

#: First pause before probing a feature store that is down; doubled up to
#: `outage_backoff_max_seconds`.
FIRST_BACKOFF_SECONDS = 0.5


class Answers:
    """Turns a poll's records into what the runner produces."""

    def __init__(
        self,
        scorer: Scorer,
        settings: KafkaSettings,
        routes: handler.Routes,
        reply_topics: ReplyTopics,
        *,
        score_inline: bool = False,
    ) -> None:
        """`score_inline`: score on the event loop, not in a thread (see the runner)."""
        self.scorer = scorer
        self.settings = settings
        self.routes = routes
        self.reply_topics = reply_topics
        self._score_inline = score_inline
        #: Set while the feature store is down: the pause before the next probe.
        self._outage: float | None = None
        # Scoring is CPU and blocking I/O: off the event loop the REST API
        # shares, one thread so one poll is scored at a time.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kafka-score")

    @property
    def paused(self) -> bool:
        """The feature store is down: consume nothing until a probe finds it back."""
        return self._outage is not None

    def close(self) -> None:
        """Let the scoring thread go (a poll being scored finishes on its own)."""
        self._executor.shutdown(wait=False)

    async def answer(
        self, producer: Any, records: Sequence[handler.Record]
    ) -> list[handler.Outgoing]:
        """Each record's answer: a reply, an error reply or a dead letter.

        `producer` is asked which reply topics exist (see `ReplyTopics`).
        """
        routes = self.routes
        parsed = handler.parse(records, routes)
        dead = parsed.dead_letters
        accepted = parsed.accepted
        refused = await self.reply_topics.refused(
            producer, {a.reply_to for a in accepted}
        )
        if refused:
            dead = dead + [
                handler.dead_letter(
                    a.record, *refused[a.reply_to], routes.dlq, routes.max_message_bytes
                )
                for a in accepted
                if a.reply_to in refused
            ]
            accepted = [a for a in accepted if a.reply_to not in refused]
        results = await self._score([a.request for a in accepted])
        outgoing = dead + handler.replies(
            accepted, results, self.scorer.model_version, routes
        )
        for o in outgoing:
            if o.kind == "dead_letter":
                log_dead_letter(o)
        return outgoing

    async def _score(self, requests: list[ChurnRequest]) -> list[ChurnResult]:
        if not requests:
            return []
        loop = asyncio.get_running_loop()
        delay = 0.2
        for attempt in range(self.settings.score_retries + 1):
            try:
                if self._score_inline:
                    return self.scorer.score(requests, "kafka")
                return await loop.run_in_executor(
                    self._executor, self.scorer.score, requests, "kafka"
                )
            except FeatureStoreUnavailable as exc:
                metrics.get().kafka_errors.labels("feature_store").inc()
                if attempt == self.settings.score_retries:
                    log.error(
                        "event=feature_store_down requests=%d error=%r: replying "
                        "with retryable errors, pausing consumption until it answers",
                        len(requests),
                        exc.message,
                    )
                    self._outage = FIRST_BACKOFF_SECONDS
                    return [
                        FeatureStoreUnavailable(
                            exc.message, customer_id=r.customer_id
                        ).to_reply()
                        for r in requests
                    ]
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def probe(self, stop: asyncio.Event) -> None:
        """Probe the feature store once, after the current backoff pause.

        Returns early once `stop` is set.
        """
        delay = self._outage or FIRST_BACKOFF_SECONDS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._executor, self.scorer.features.get, ["__probe__"]
            )
        except FeatureStoreUnavailable as exc:
            self._outage = min(delay * 2, self.settings.outage_backoff_max_seconds)
            log.warning(
                "event=feature_store_still_down error=%r next_probe_s=%.1f",
                exc.message,
                self._outage,
            )
            return
        log.info("event=feature_store_back: resuming consumption")
        self._outage = None
