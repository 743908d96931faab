"""The Kafka request/reply runner: consume, score a whole poll at once, reply, commit.

The runner owns the lifecycle (start, stop, reconnect, rewind) and the poll
loop; its parts each do one job: `answers` decides every record's answer,
`producer` sends them one batch per partition (dead-lettering replies the
broker refuses), `commits` commits polls once their replies are acked, and
`clients` builds and restarts the aiokafka clients.

At-least-once (default): the replies of a poll are produced by an idempotent
producer, and the poll's offsets are committed only once the broker has
acknowledged every one of them, beside the poll loop (`CommitQueue`). Up to
`max_in_flight_batches` polls may await their acks while the next is scored;
past that the loop waits for the oldest.

Each record's outcome is decided on its own: no poison record, refused reply
topic, oversized dead letter or failed scoring stops its partition. Only an
outage rewinds: a produce or commit the broker did not take rewinds to the
last committed offsets (nothing is lost; a reply may repeat, replies are
idempotent by correlation id), with backoff; a feature store that stays down
pauses consumption until it answers again.

Exactly-once (`exactly_once=True`): each poll's replies and offsets go in one
transaction (`send_offsets_to_transaction`); `read_committed` readers see each
reply once. A rebalance waits for the transaction in hand, and records of
partitions revoked meanwhile are left to their new owner. What this does not
cover (aiokafka has no KIP-447 fencing by group generation): a runner stalled
past its session timeout while holding an open transaction (a zombie) can still
commit it after its partitions moved, so those records may be answered twice.
A runner restarted under the same instance id fences its predecessor's
transactions (transactional id epoch); a fenced runner stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from asyncio import FIRST_COMPLETED
from collections import Counter
from typing import Any

from consumers import clients, handler
from consumers.answers import Answers
from consumers.commits import CommitQueue, InFlight, silence
from consumers.producer import Delivery
from consumers.reply_topics import ReplyTopics
from consumers.topics import ensure_topics
from predictflow import metrics
from predictflow.scoring import Scorer
from predictflow.settings import KafkaSettings

log = logging.getLogger("predictflow.kafka")

#: Longest wait at shutdown for replies in flight to be acknowledged.
SHUTDOWN_DRAIN_SECONDS = 15.0
#: First pause after an outage; doubled up to `outage_backoff_max_seconds`.
FIRST_BACKOFF_SECONDS = 0.5


class KafkaRunner:
    """One consumer in the group, scoring with the shared `Scorer`."""

    def __init__(
        self,
        scorer: Scorer,
        settings: KafkaSettings,
        *,
        instance: str = "0",
        score_inline: bool = False,
    ) -> None:
        """`score_inline`: score on the event loop, not in a thread.

        In the service the loop also serves REST, so a poll is scored in a
        thread; the standalone runner has nothing else on its loop, and a
        thread only adds a hand-over of the GIL per poll (~2 ms at 1,000
        msg/s, most of a reply's latency at that rate).
        """
        if not settings.bootstrap_servers:
            raise ValueError("the Kafka runner needs kafka.bootstrap_servers")
        self.scorer = scorer
        self.settings = settings
        self.bootstrap = settings.bootstrap_servers
        self.routes = handler.Routes(
            default_reply_to=settings.reply_topic,
            dlq=settings.dlq_topic,
            request_topic=settings.request_topic,
            pattern=settings.reply_topic_pattern,
            max_message_bytes=settings.max_message_bytes,
        )
        self.reply_topics = ReplyTopics(
            settings.metadata_timeout_ms / 1000, settings.topic_cache_seconds
        )
        self.delivery = Delivery(
            self.routes, self.reply_topics, transactional=settings.exactly_once
        )
        #: Pause before the next rewind (broker outage); reset by a commit.
        self._backoff = FIRST_BACKOFF_SECONDS
        self.instance = instance
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        # Commits, drains (a rebalance) and transactions exclude one another.
        self._lock = asyncio.Lock()
        self.commits = CommitQueue(self._commit, self._committed, self._lock)
        self._positions: dict[Any, int] = {}
        self.answers = Answers(
            scorer, settings, self.routes, self.reply_topics, score_inline=score_inline
        )
        self._consumer: Any = None
        self._producer: Any = None
        self._task: asyncio.Task[Any] | None = None

    # lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Create topics if asked, then connect the consumer and producer."""
        from aiokafka.abc import ConsumerRebalanceListener

        s = self.settings
        if s.create_topics:
            await ensure_topics(s, self.bootstrap)
        runner = self

        class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await runner.commits.drain()
                for tp in revoked:
                    runner._positions.pop(tp, None)
                    metrics.get().kafka_lag.remove(tp.topic, str(tp.partition))

            async def on_partitions_assigned(self, assigned: Any) -> None:
                log.info(
                    "event=partitions_assigned instance=%s partitions=%s",
                    runner.instance,
                    sorted(tp.partition for tp in assigned),
                )

        self._producer = clients.new_producer(s, self.instance)
        self._consumer = clients.new_consumer(s, self.instance)
        self._consumer.subscribe([s.request_topic], listener=_Listener())
        await self._producer.start()
        await self._consumer.start()
        log.info(
            "event=kafka_runner_started instance=%s topic=%s group=%s mode=%s",
            self.instance,
            s.request_topic,
            s.group_id,
            "exactly_once" if s.exactly_once else "at_least_once",
        )

    def request_stop(self) -> None:
        """Stop polling; the poll in hand is finished and committed."""
        self._stop.set()

    async def stop(self, grace: float = 30.0) -> None:
        """Request a stop and wait for the loop to finish and disconnect.

        A loop still busy after `grace` seconds (a broker that does not
        answer) is cancelled: its uncommitted polls are redelivered.
        """
        self.request_stop()
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped.wait()), grace)
        except TimeoutError:
            log.warning("event=kafka_stop_timeout grace=%.0f: cancelling", grace)
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._stopped.wait()), 5)

    async def run(self) -> None:
        """Poll, score, reply and commit until asked to stop."""
        committer = asyncio.create_task(self.commits.run())
        try:
            while not self._stop.is_set():
                try:
                    await self._step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the loop must survive
                    if clients.fenced(exc):
                        self.commits.silence()
                        # Another runner took this transactional id: this one
                        # is a zombie. Starting a fresh producer would fence
                        # the live one in turn; stop instead (redelivery and
                        # the live runner cover what was not committed).
                        metrics.get().kafka_errors.labels("fenced").inc()
                        log.error(
                            "event=kafka_fenced instance=%s error=%s: another "
                            "runner uses this instance id; stopping",
                            self.instance,
                            type(exc).__name__,
                        )
                        self.request_stop()
                        break
                    await self._recover("loop", exc)
            try:
                await asyncio.wait_for(self.commits.drain(), SHUTDOWN_DRAIN_SECONDS)
            except Exception as exc:  # noqa: BLE001 - uncommitted work is redelivered
                log.warning(
                    "event=shutdown_drain_failed error=%r: polls in flight stay "
                    "uncommitted and will be redelivered",
                    exc,
                )
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self._close()
            self._stopped.set()

    async def serve(self) -> None:
        """start() (retried until the broker answers), then run(); stoppable."""
        self._task = asyncio.current_task()
        delay = 1.0
        while not self._stop.is_set():
            starting = asyncio.create_task(self.start())
            stopping = asyncio.create_task(self._stop.wait())
            await asyncio.wait({starting, stopping}, return_when=FIRST_COMPLETED)
            stopping.cancel()
            if not starting.done():
                # Asked to stop while the broker does not answer.
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await starting
                break
            if (exc := starting.exception()) is None:
                await self.run()
                return
            metrics.get().kafka_errors.labels("start").inc()
            log.warning(
                "event=kafka_start_failed error=%s: %s; retrying in %.0fs",
                type(exc).__name__,
                exc,
                delay,
            )
            await self._close_clients()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 30.0)
        await self._close()
        self._stopped.set()

    # one step --------------------------------------------------------------

    async def _step(self) -> None:
        s = self.settings
        self.commits.raise_failure()
        if self.answers.paused:
            await self.answers.probe(self._stop)
            return
        batch = await self._consumer.getmany(
            timeout_ms=s.poll_timeout_ms, max_records=s.max_batch
        )
        # What this poll returned is discarded if the committer failed: the
        # rewind redelivers it.
        self.commits.raise_failure()
        if not batch:
            await self.commits.drain()
            return
        if s.exactly_once:
            # A rebalance (`drain` in the listener) waits for this transaction;
            # partitions revoked before it started are their new owner's.
            async with self._lock:
                owned = self._consumer.assignment()
                batch = {tp: recs for tp, recs in batch.items() if tp in owned}
                if batch:
                    started, records, offsets = self._consumed(batch)
                    outgoing = await self.answers.answer(self._producer, records)
                    await self._send_transaction(outgoing, offsets, started)
                    self._backoff = FIRST_BACKOFF_SECONDS
        else:
            started, records, offsets = self._consumed(batch)
            outgoing = await self.answers.answer(self._producer, records)
            acks = await self.delivery.send(self._producer, outgoing)
            self.commits.add(InFlight(offsets, acks, len(records), started))
            await self.commits.wait_for_room(s.max_in_flight_batches)
        self._positions.update(offsets)
        self._update_lag()

    def _consumed(
        self, batch: dict[Any, list[Any]]
    ) -> tuple[float, list[Any], dict[Any, int]]:
        """Start of a poll's clock, its records and the offsets to commit after it."""
        started = time.perf_counter()
        records = [r for recs in batch.values() for r in recs]
        offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items()}
        m = metrics.get()
        m.kafka_consumed.inc(len(records))
        m.kafka_batch_size.observe(len(records))
        return started, records, offsets

    async def _send_transaction(
        self,
        outgoing: list[handler.Outgoing],
        offsets: dict[Any, int],
        started: float,
    ) -> None:
        async with self._producer.transaction():
            acks = await self.delivery.send(self._producer, outgoing)
            try:
                await asyncio.gather(*acks)
            except BaseException:
                # The transaction aborts; the other batches' failures are its.
                for ack in acks:
                    ack.add_done_callback(silence)
                raise
            await self._producer.send_offsets_to_transaction(
                offsets, self.settings.group_id
            )
        self._record_done(outgoing, started)

    async def _commit(self, offsets: dict[Any, int]) -> None:
        await self._consumer.commit(offsets)

    def _committed(self, items: list[InFlight]) -> None:
        self._backoff = FIRST_BACKOFF_SECONDS
        for item in items:
            self._record_done(item.outgoing(), item.started)

    def _record_done(self, outgoing: list[handler.Outgoing], started: float) -> None:
        m = metrics.get()
        # Counted per kind, not per record: a label lookup costs more than the add.
        for (kind, reason), n in Counter((o.kind, o.reason) for o in outgoing).items():
            if kind == "dead_letter":
                m.kafka_dead_lettered.labels(reason or "unknown").inc(n)
            else:
                m.kafka_replied.labels(kind).inc(n)
        m.kafka_processing_seconds.observe(time.perf_counter() - started)

    def _update_lag(self) -> None:
        lag = metrics.get().kafka_lag
        for tp, position in self._positions.items():
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                lag.labels(tp.topic, str(tp.partition)).set(
                    max(highwater - position, 0)
                )

    async def _recover(self, stage: str, exc: BaseException) -> None:
        """Forget polls in flight and rewind to the committed offsets."""
        metrics.get().kafka_errors.labels(stage).inc()
        log.warning(
            "event=kafka_error stage=%s error=%s: %s; rewinding to committed "
            "offsets in %.1fs",
            stage,
            type(exc).__name__,
            exc,
            self._backoff,
        )
        # Whatever the committer saw is covered by this rewind.
        self.commits.abandon()
        self._positions.clear()
        # Bounded exponential backoff: a broker that is down is not asked
        # again and again, and the loop resumes by itself once it answers.
        delay, self._backoff = (
            self._backoff,
            min(self._backoff * 2, self.settings.outage_backoff_max_seconds),
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
        if self.settings.exactly_once:
            # A transactional producer whose transaction failed on a refused
            # record does not begin another: a fresh one, same transactional id.
            old, self._producer = self._producer, None
            try:
                self._producer = await clients.fresh_producer(
                    old, self.settings, self.instance
                )
            except Exception as start_exc:  # noqa: BLE001 - retried by the loop
                log.warning("event=producer_restart_failed error=%r", start_exc)
                self.commits.fail(start_exc)
                return
        try:
            await clients.rewind(self._consumer)
        except Exception as seek_exc:  # noqa: BLE001 - retried by the loop
            log.warning("event=rewind_failed error=%r", seek_exc)
            # Not one more poll or commit from the current positions, which
            # are past replies never acknowledged: the loop rewinds again.
            self.commits.fail(seek_exc)
            await asyncio.sleep(1.0)

    async def _close_clients(self) -> None:
        await clients.close(self._consumer, self._producer)
        self._consumer = self._producer = None

    async def _close(self) -> None:
        await self._close_clients()
        self.answers.close()
        log.info("event=kafka_runner_stopped instance=%s", self.instance)
