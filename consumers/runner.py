"""The Kafka request/reply runner: consume, score a whole poll at once, reply, commit.

At-least-once (default): the replies of a poll are produced by an idempotent
producer, and the poll's offsets are committed only once the broker has
acknowledged every one of them. Commits run beside the poll loop (one
committer task, in poll order, one commit for every poll acknowledged since
the last), so a reply never waits for a commit round trip. Up to
`max_in_flight_batches` polls may await their acks while the next is scored;
past that the loop waits for the oldest.

Each record's outcome is decided on its own: replied, error-replied, or
dead-lettered with a reason. A poison record, a reply topic that is invalid,
not allowed, missing or forbidden (`reply_topics`), a dead letter too large
(truncated) or a request whose scoring raises never stops its partition.
Only an outage rewinds: a produce or commit the broker did not take rewinds
to the last committed offsets (nothing is lost; a reply may repeat, replies
are idempotent by correlation id), with backoff; a feature store that stays
down gets the poll retryable error replies, then consumption pauses until
the store answers again, probed with bounded exponential backoff.

Exactly-once (`exactly_once=True`): each poll's replies and offsets go in one
transaction (`send_offsets_to_transaction`); `read_committed` readers see each
reply once. A rebalance waits for the transaction in hand, and records of
partitions revoked meanwhile are left to their new owner. What this does not
cover (aiokafka has no KIP-447 fencing by group generation): a runner stalled
past its session timeout while holding an open transaction (a zombie) can still
commit it after its partitions moved, so those records may be answered twice.
A runner restarted under the same instance id fences its predecessor's
transactions (transactional id epoch).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from asyncio import FIRST_COMPLETED
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from consumers import handler
from consumers.reply_topics import ReplyTopics, undeliverable
from consumers.security import client_security
from consumers.topics import ensure_topics
from predictflow import metrics
from predictflow.contract import ChurnRequest, ChurnScore, ErrorReply
from predictflow.errors import FeatureStoreUnavailable
from predictflow.scoring import Scorer
from predictflow.settings import KafkaSettings

log = logging.getLogger("predictflow.kafka")

#: Longest wait at shutdown for replies in flight to be acknowledged.
SHUTDOWN_DRAIN_SECONDS = 15.0
#: First pause after an outage; doubled up to `outage_backoff_max_seconds`.
FIRST_BACKOFF_SECONDS = 0.5

Result = ChurnScore | ErrorReply


@dataclass
class _InFlight:
    """A poll whose replies were handed to the producer, awaiting acks."""

    offsets: dict[Any, int]
    #: One per produced batch: its records as delivered (replies, or the dead
    #: letters that replaced replies the broker refused).
    acks: list[asyncio.Future[list[handler.Outgoing]]]
    records: int
    started: float

    def outgoing(self) -> list[handler.Outgoing]:
        """What the poll produced, once every ack succeeded."""
        return [o for ack in self.acks for o in ack.result()]

    def acked(self) -> bool:
        """Every reply of the poll is acknowledged (or failed)."""
        return all(a.done() for a in self.acks)

    def succeeded(self) -> bool:
        """Every reply of the poll is acknowledged, none failed."""
        return all(
            a.done() and not a.cancelled() and a.exception() is None for a in self.acks
        )


@functools.lru_cache(maxsize=65_536)
def _murmur2(key: bytes) -> int:
    """aiokafka's murmur2 (pure Python), remembered: reply keys recur."""
    from aiokafka.partitioner import murmur2

    return int(murmur2(key))


def _silence(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


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
        #: Pause before the next rewind (broker outage); reset by a commit.
        self._backoff = FIRST_BACKOFF_SECONDS
        #: Set while the feature store is down: the pause before the next probe.
        self._outage: float | None = None
        self.instance = instance
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._lock = asyncio.Lock()
        self._pending: deque[_InFlight] = deque()
        self._score_inline = score_inline
        # Set when a poll is handed to the producer; wakes the committer.
        self._produced = asyncio.Event()
        # A produce or commit failure seen by the committer, for the loop.
        self._failure: BaseException | None = None
        self._positions: dict[Any, int] = {}
        # Scoring is CPU and blocking I/O: off the event loop the REST API
        # shares, one thread so one poll is scored at a time.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kafka-score")
        self._consumer: Any = None
        self._producer: Any = None
        self._task: asyncio.Task[Any] | None = None

    # lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Create topics if asked, then connect the consumer and producer."""
        from aiokafka import AIOKafkaConsumer
        from aiokafka.abc import ConsumerRebalanceListener

        s = self.settings
        if s.create_topics:
            await ensure_topics(s, self.bootstrap)
        runner = self

        class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await runner._drain()
                for tp in revoked:
                    runner._positions.pop(tp, None)
                    metrics.get().kafka_lag.remove(tp.topic, str(tp.partition))

            async def on_partitions_assigned(self, assigned: Any) -> None:
                log.info(
                    "event=partitions_assigned instance=%s partitions=%s",
                    runner.instance,
                    sorted(tp.partition for tp in assigned),
                )

        self._producer = self._new_producer()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=s.group_id,
            client_id=f"predictflow-{self.instance}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=s.max_batch,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            fetch_min_bytes=s.fetch_min_bytes,
            session_timeout_ms=s.session_timeout_ms,
            **client_security(s),
        )
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

    def _new_producer(self) -> Any:
        from aiokafka import AIOKafkaProducer

        s = self.settings
        producer_args: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "client_id": f"predictflow-{self.instance}",
            "acks": "all",
            "enable_idempotence": True,
            # The runner batches a poll's replies itself (`_send_all`): no
            # reason to hold a batch back.
            "linger_ms": 0,
            "max_request_size": s.max_message_bytes + 64 * 1024,
            "transaction_timeout_ms": s.transaction_timeout_ms,
            **client_security(s),
        }
        if s.exactly_once:
            producer_args["transactional_id"] = f"{s.transactional_id}-{self.instance}"
        return AIOKafkaProducer(**producer_args)

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
        committer = asyncio.create_task(self._commit_loop())
        try:
            while not self._stop.is_set():
                try:
                    await self._step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the loop must survive
                    if _fenced(exc):
                        _retrieve_failures(self._pending)
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
                await asyncio.wait_for(self._drain(), SHUTDOWN_DRAIN_SECONDS)
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
        self._raise_failure()
        if self._outage is not None:
            await self._wait_for_feature_store()
            return
        batch = await self._consumer.getmany(
            timeout_ms=s.poll_timeout_ms, max_records=s.max_batch
        )
        # What this poll returned is discarded if the committer failed: the
        # rewind redelivers it.
        self._raise_failure()
        if not batch:
            await self._drain()
            return
        if s.exactly_once:
            # A rebalance (`_drain` in the listener) waits for this transaction;
            # partitions revoked before it started are their new owner's.
            async with self._lock:
                owned = self._consumer.assignment()
                batch = {tp: recs for tp, recs in batch.items() if tp in owned}
                if batch:
                    started, records, offsets = self._consumed(batch)
                    outgoing = await self._process(records)
                    await self._send_transaction(outgoing, offsets, started)
                    self._backoff = FIRST_BACKOFF_SECONDS
        else:
            started, records, offsets = self._consumed(batch)
            outgoing = await self._process(records)
            acks = await self._send_all(outgoing)
            self._pending.append(_InFlight(offsets, acks, len(records), started))
            self._produced.set()
            unacked = [p for p in self._pending if not p.acked()]
            if len(unacked) >= s.max_in_flight_batches:
                await asyncio.gather(*unacked[0].acks)
            if len(self._pending) >= 4 * s.max_in_flight_batches:
                # Acknowledged but not committed (a slow or absent group
                # coordinator): wait for the commits instead of piling up.
                await self._drain()
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

    async def _process(
        self, records: Sequence[handler.Record]
    ) -> list[handler.Outgoing]:
        """Each record's answer: a reply, an error reply or a dead letter."""
        routes = self.routes
        parsed = handler.parse(records, routes)
        dead = parsed.dead_letters
        accepted = parsed.accepted
        refused = await self.reply_topics.refused(
            self._producer, {a.reply_to for a in accepted}
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
                _log_dead_letter(o)
        return outgoing

    async def _score(self, requests: list[ChurnRequest]) -> list[Result]:
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

    async def _wait_for_feature_store(self) -> None:
        """Probe the feature store once, after the current backoff pause."""
        delay = self._outage or FIRST_BACKOFF_SECONDS
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
        if self._stop.is_set():
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

    async def _send_all(
        self, outgoing: Sequence[handler.Outgoing]
    ) -> list[asyncio.Future[list[handler.Outgoing]]]:
        """Hand a poll's records to the producer: one batch per partition.

        Records go to the partition the producer's own partitioner would pick
        (murmur2 of the key, as Java clients do), in order; one `send_batch`
        per partition instead of a `send` per record halves the producer's
        CPU per record. A batch that fills up is sent and another started.
        Returns one future per batch, done when the broker has acknowledged it
        (or its dead letters, see `_delivered`).
        """
        producer = self._producer
        batches: dict[tuple[str, int], Any] = {}
        members: dict[tuple[str, int], list[handler.Outgoing]] = {}
        acks: list[asyncio.Future[list[handler.Outgoing]]] = []
        partitions: dict[str, tuple[list[int], list[int]]] = {}
        for o in outgoing:
            if o.topic not in partitions:
                every = sorted(await producer.partitions_for(o.topic))
                available = producer.client.cluster.available_partitions_for_topic(
                    o.topic
                )
                partitions[o.topic] = (every, sorted(available or ()))
            parts, available = partitions[o.topic]
            tp = (o.topic, self._partition(o.key, parts, available))
            batch = batches.get(tp)
            if batch is None:
                batch = batches[tp] = producer.create_batch()
                members[tp] = []
            if (
                batch.append(
                    key=o.key, value=o.value, timestamp=None, headers=o.headers
                )
                is None
            ):
                ack = await producer.send_batch(batch, tp[0], partition=tp[1])
                acks.append(self._delivered(ack, members[tp]))
                batch = batches[tp] = producer.create_batch()
                members[tp] = []
                batch.append(
                    key=o.key, value=o.value, timestamp=None, headers=o.headers
                )
            members[tp].append(o)
        for tp, batch in batches.items():
            ack = await producer.send_batch(batch, tp[0], partition=tp[1])
            acks.append(self._delivered(ack, members[tp]))
        return acks

    def _delivered(
        self, ack: asyncio.Future[Any], records: list[handler.Outgoing]
    ) -> asyncio.Future[list[handler.Outgoing]]:
        """Done when `records` are acknowledged, or dead-lettered instead.

        Replies the broker refuses for a reason of their own (topic not
        authorized or gone, record too large) are dead-lettered, and their
        topic remembered as refused; any other failure (timeout, broker
        down) is raised, for the loop to rewind. In exactly-once mode a
        refused reply aborts the transaction (nothing more can be sent in
        it): the topic is remembered, so the redelivered poll dead-letters it.
        """
        return asyncio.ensure_future(self._deliver(ack, records))

    async def _deliver(
        self, ack: asyncio.Future[Any], records: list[handler.Outgoing]
    ) -> list[handler.Outgoing]:
        try:
            await ack
            return records
        except Exception as exc:
            reason = undeliverable(exc)
            first = records[0]
            if reason is None or first.kind == "dead_letter":
                raise
            message = (
                f"the reply could not be produced to {first.topic!r}: "
                f"{type(exc).__name__}"
            )
            # Replies are small: one too large means the topic's own limit is.
            self.reply_topics.learn(first.topic, reason, message)
            log.warning(
                "event=reply_refused topic=%s reason=%s error=%s",
                first.topic,
                reason,
                type(exc).__name__,
            )
            if self.settings.exactly_once:
                raise
        routes = self.routes
        dead = [
            handler.dead_letter(
                o.source, reason, message, routes.dlq, routes.max_message_bytes
            )
            for o in records
            if o.source is not None
        ]
        for o in dead:
            _log_dead_letter(o)
        return [
            o
            for batch in await asyncio.gather(*await self._send_all(dead))
            for o in batch
        ]

    def _partition(
        self, key: bytes | None, partitions: list[int], available: list[int]
    ) -> int:
        """The producer's default partitioner (Java's): murmur2 of the key.

        `partitions` is every partition of the topic, sorted; a record
        without a key goes to one of `available` (those with a leader).
        """
        if key is None:
            # As aiokafka's: any partition with a leader now, else any at all.
            return random.choice(available or partitions)  # noqa: S311 - load spread
        return partitions[(_murmur2(key) & 0x7FFFFFFF) % len(partitions)]

    async def _send_transaction(
        self,
        outgoing: list[handler.Outgoing],
        offsets: dict[Any, int],
        started: float,
    ) -> None:
        async with self._producer.transaction():
            acks = await self._send_all(outgoing)
            try:
                await asyncio.gather(*acks)
            except BaseException:
                # The transaction aborts; the other batches' failures are its.
                for ack in acks:
                    ack.add_done_callback(_silence)
                raise
            await self._producer.send_offsets_to_transaction(
                offsets, self.settings.group_id
            )
        self._record_done(outgoing, started)

    async def _commit_loop(self) -> None:
        """Commit polls as their replies are acknowledged, oldest first.

        One commit covers every poll acknowledged since the previous one, so
        at a high rate commits stay few, and at a low rate each poll is
        committed a round trip after its acks. A failure is handed to the
        poll loop (`_raise_failure`), which rewinds; nothing after the failed
        poll is committed meanwhile.
        """
        while True:
            await self._produced.wait()
            self._produced.clear()
            try:
                while self._pending and self._failure is None:
                    async with self._lock:
                        if not self._pending:
                            break
                        await asyncio.gather(*self._pending[0].acks)
                        # A poll with a failed reply stays first in line: no
                        # commit (here or in `_drain`) gets past it.
                        done = []
                        while self._pending and self._pending[0].succeeded():
                            done.append(self._pending.popleft())
                        if done:  # none when a rewind emptied the queue
                            await self._complete(done)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # stopping
                # An ack future was cancelled, not this task: a failure too.
                self._failure = RuntimeError("a reply's acknowledgement was cancelled")
            except Exception as exc:  # noqa: BLE001 - the loop rewinds
                self._failure = exc

    def _raise_failure(self) -> None:
        if self._failure is not None:
            exc, self._failure = self._failure, None
            raise exc

    async def _drain(self) -> None:
        """Complete every poll in flight (acks, then one commit)."""
        async with self._lock:
            if self._failure is not None:
                # The committer saw a reply fail: committing what followed it
                # would skip its records. The loop rewinds instead.
                raise self._failure
            if self._pending:
                done = list(self._pending)
                self._pending.clear()
                await self._complete(done)

    async def _complete(self, items: list[_InFlight]) -> None:
        """Await the replies of these polls (oldest first), then commit them at once."""
        offsets: dict[Any, int] = {}
        for item in items:
            await asyncio.gather(*item.acks)
            offsets.update(item.offsets)
        await self._consumer.commit(offsets)
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
        for item in self._pending:
            for ack in item.acks:
                # Consumed so a later failure is not reported as unretrieved.
                ack.add_done_callback(_silence)
        self._pending.clear()
        # Whatever the committer saw is covered by this rewind.
        self._failure = None
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
            # record does not begin another (aiokafka): start a fresh one under
            # the same transactional id, which also fences the old one.
            try:
                await self._replace_producer()
            except Exception as start_exc:  # noqa: BLE001 - retried by the loop
                log.warning("event=producer_restart_failed error=%r", start_exc)
                self._failure = start_exc
                return
        try:
            async with asyncio.timeout(15):
                for tp in self._consumer.assignment():
                    committed = await self._consumer.committed(tp)
                    if committed is None:
                        await self._consumer.seek_to_beginning(tp)
                    else:
                        self._consumer.seek(tp, committed)
        except Exception as seek_exc:  # noqa: BLE001 - retried by the loop
            log.warning("event=rewind_failed error=%r", seek_exc)
            # Not one more poll or commit from the current positions, which
            # are past replies never acknowledged: the loop rewinds again.
            self._failure = seek_exc
            await asyncio.sleep(1.0)

    async def _replace_producer(self) -> None:
        old, self._producer = self._producer, None
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), 5)
        producer = self._new_producer()
        try:
            await asyncio.wait_for(producer.start(), 30)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)
            raise
        self._producer = producer

    async def _close_clients(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                try:
                    # A broker that does not answer must not hold up a shutdown.
                    await asyncio.wait_for(client.stop(), 5)
                except Exception as exc:  # noqa: BLE001 - closing anyway
                    log.warning("event=kafka_close_failed error=%r", exc)
        self._consumer = self._producer = None

    async def _close(self) -> None:
        await self._close_clients()
        self._executor.shutdown(wait=False)
        log.info("event=kafka_runner_stopped instance=%s", self.instance)


def _log_dead_letter(o: handler.Outgoing) -> None:
    source = o.source
    log.warning(
        "event=dead_lettered reason=%s correlation_id=%s source=%s/%s/%s",
        o.reason,
        o.correlation_id,
        source.topic if source else None,
        source.partition if source else None,
        source.offset if source else None,
    )


def _retrieve_failures(pending: deque[_InFlight]) -> None:
    """Mark the acks of abandoned polls as seen (no 'never retrieved' noise)."""
    for item in pending:
        for ack in item.acks:
            ack.add_done_callback(_silence)


def _fenced(exc: BaseException) -> bool:
    """True when a newer producer with this transactional id fenced this one."""
    from aiokafka.errors import ProducerFenced

    return isinstance(exc, ProducerFenced)
