"""Async helpers for the Kafka tests: publish requests, collect replies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError


@dataclass
class Sent:
    """What a test published: correlation id -> (customer id, partition, offset)."""

    records: dict[str, tuple[str, int, int]] = field(default_factory=dict)


async def publish(
    bootstrap: str,
    topic: str,
    customer_ids: list[str],
    sent: Sent | None = None,
    rate: float | None = None,
) -> Sent:
    """Publish one valid request per customer id (at `rate` per second if given)."""
    sent = sent or Sent()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        start = time.monotonic()
        futures = []
        for i, cid in enumerate(customer_ids):
            correlation_id = uuid.uuid4().hex
            fut = await producer.send(
                topic,
                json.dumps({"customer_id": cid}).encode(),
                key=cid.encode(),
                headers=[("correlation_id", correlation_id.encode())],
            )
            futures.append((correlation_id, cid, fut))
            if rate is not None:
                due = start + (i + 1) / rate
                if (pause := due - time.monotonic()) > 0:
                    await asyncio.sleep(pause)
        for correlation_id, cid, fut in futures:
            md = await fut
            sent.records[correlation_id] = (cid, md.partition, md.offset)
    finally:
        await producer.stop()
    return sent


async def partitions_of(bootstrap: str, topic: str) -> set[int]:
    """The partitions of a topic (waits for its metadata)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        return set(await producer.partitions_for(topic))
    finally:
        await producer.stop()


async def read_all(
    bootstrap: str,
    topic: str,
    *,
    until: set[str] | None = None,
    wait_s: float = 120,
    read_committed: bool = False,
    settle: float = 0.0,
) -> dict[str, list[tuple[dict[str, Any], dict[str, bytes]]]]:
    """Every record of `topic` from the start, grouped by correlation id.

    Stops once every id in `until` was seen (then reads `settle` seconds more,
    to catch duplicates), or after `wait_s` seconds.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
    )
    await consumer.start()
    seen: dict[str, list[tuple[dict[str, Any], dict[str, bytes]]]] = defaultdict(list)
    try:
        partitions = await partitions_of(bootstrap, topic)
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + wait_s
        settled_at: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    headers = dict(r.headers or ())
                    cid = headers.get("correlation_id", b"").decode()
                    try:
                        body = json.loads(r.value) if r.value else {}
                    except ValueError:
                        body = {"_raw": r.value}
                    seen[cid].append((body, headers))
            if until is not None and until <= seen.keys():
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= settle:
                    break
    finally:
        await consumer.stop()
    return dict(seen)


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The consumer group's committed offset of each partition (-1: none)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = await partitions_of(bootstrap, topic)
        result = {}
        for p in partitions:
            committed = await consumer.committed(TopicPartition(topic, p))
            result[p] = -1 if committed is None else committed
        return result
    finally:
        await consumer.stop()


# -- chaos tests: a paced stream of requests, replies watched live ----------


class Stream:
    """Publishes one request per customer id at a fixed rate, never past `limit`.

    A chaos test raises the limit leg by leg (`allow`), so however late a fault
    strikes, no more than the limit can have been answered by then; within a
    leg the stream keeps going while the fault happens. `sent` fills in as the
    broker acknowledges each request. The producer is idempotent: a request
    retried across a broker restart is not written twice (which would look
    like a duplicate reply).
    """

    def __init__(
        self, bootstrap: str, topic: str, customer_ids: Sequence[str], rate: float
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.customer_ids = list(customer_ids)
        self.rate = rate
        self.sent = Sent()
        self.limit = 0
        #: Requests handed to the producer so far.
        self.published = 0
        self._raised = asyncio.Event()
        self._futures: list[asyncio.Future[Any]] = []
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Stream:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            # Rides out a broker restart instead of failing the sends.
            request_timeout_ms=180_000,
        )
        await self._producer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._producer is not None:
            await self._producer.stop()

    def allow(self, limit: int) -> None:
        """Let the stream go on up to `limit` requests in all."""
        self.limit = min(limit, len(self.customer_ids))
        self._raised.set()

    async def flush(self) -> None:
        """Wait until every request handed to the producer is acknowledged."""
        await asyncio.gather(*self._futures)

    async def done(self) -> Sent:
        """Wait for the whole stream (the limit must reach the end)."""
        assert self._task is not None
        await self._task
        await self.flush()
        return self.sent

    async def _run(self) -> None:
        producer = self._producer
        assert producer is not None
        start, base = time.monotonic(), 0
        for i, customer_id in enumerate(self.customer_ids):
            if i >= self.limit:
                while i >= self.limit:
                    self._raised.clear()
                    await self._raised.wait()
                # The next leg keeps the rate from where it resumes: no burst
                # to catch up with the time spent waiting.
                start, base = time.monotonic(), i
            correlation_id = uuid.uuid4().hex
            future = await producer.send(
                self.topic,
                json.dumps({"customer_id": customer_id}).encode(),
                key=customer_id.encode(),
                headers=[("correlation_id", correlation_id.encode())],
            )
            future.add_done_callback(
                lambda f, c=correlation_id, k=customer_id: self._acked(c, k, f)
            )
            self._futures.append(future)
            self.published = i + 1
            due = start + (i + 1 - base) / self.rate
            if (pause := due - time.monotonic()) > 0:
                await asyncio.sleep(pause)

    def _acked(
        self, correlation_id: str, customer_id: str, future: asyncio.Future[Any]
    ) -> None:
        if not future.cancelled() and future.exception() is None:
            md = future.result()
            self.sent.records[correlation_id] = (customer_id, md.partition, md.offset)


@dataclass(frozen=True)
class Reply:
    """One record of a reply topic."""

    correlation_id: str
    partition: int
    offset: int
    value: bytes | None
    headers: dict[str, bytes]


class ReplyWatch:
    """Reads a reply topic from its start, live, while a chaos test runs.

    `answered()` is the number of distinct correlation ids replied so far, to
    time a fault; `mark()` notes the topic's end offsets at the moment of the
    fault, so that `answered_before(mark)` later says exactly which ids had a
    reply by then (under read_committed: a committed one, as the mark is the
    last stable offset).
    """

    def __init__(self, bootstrap: str, topic: str, *, read_committed: bool) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._isolation = "read_committed" if read_committed else "read_uncommitted"

        def consumer(isolation: str) -> AIOKafkaConsumer:
            return AIOKafkaConsumer(
                bootstrap_servers=bootstrap,
                group_id=None,
                enable_auto_commit=False,
                isolation_level=isolation,
                # A fault is timed on these counts: fetch as records arrive.
                fetch_max_wait_ms=50,
            )

        self._reader = consumer(self._isolation)
        # End offsets: high watermarks, and last stable offsets.
        self._ends = {i: consumer(i) for i in ("read_uncommitted", "read_committed")}
        self.replies: list[Reply] = []
        self._answered: set[str] = set()
        self._positions: dict[int, int] = {}
        self._changed = asyncio.Event()
        self._tps: list[TopicPartition] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ReplyWatch:
        for consumer in (self._reader, *self._ends.values()):
            await consumer.start()
        partitions = await partitions_of(self.bootstrap, self.topic)
        self._tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        reader = self._reader
        reader.assign(self._tps)
        await reader.seek_to_beginning(*self._tps)
        self._task = asyncio.create_task(self._follow())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for consumer in (self._reader, *self._ends.values()):
            await consumer.stop()

    async def _follow(self) -> None:
        reader = self._reader
        while True:
            try:
                batch = await reader.getmany(timeout_ms=200)
            except KafkaError:
                # The broker restarting under a test: read on once it is back.
                await asyncio.sleep(0.5)
                continue
            for tp, records in batch.items():
                for r in records:
                    headers = dict(r.headers or ())
                    cid = headers.get("correlation_id", b"").decode()
                    self.replies.append(
                        Reply(cid, tp.partition, r.offset, r.value, headers)
                    )
                    self._answered.add(cid)
            for tp in self._tps:
                # Past control records and aborted transactions too.
                self._positions[tp.partition] = await reader.position(tp)
            self._changed.set()

    def answered(self) -> int:
        """Distinct correlation ids with a reply read so far."""
        return len(self._answered)

    async def _until(self, done: Callable[[], bool], wait_s: float, what: str) -> None:
        deadline = time.monotonic() + wait_s
        while not done():
            if self._task is not None and self._task.done():
                self._task.result()  # the reader failed: say why
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what} after {wait_s:.0f}s on {self.topic}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))

    async def wait_answered(self, n: int, wait_s: float = 120) -> None:
        """Wait until `n` distinct correlation ids have a reply."""
        await self._until(
            lambda: self.answered() >= n,
            wait_s,
            f"{self.answered()} of {n} ids answered",
        )

    async def mark(self) -> dict[int, int]:
        """The topic's end offsets now (last stable offsets under read_committed)."""
        return await self._end_offsets(self._isolation)

    async def undecided(self) -> dict[int, int]:
        """Records in open transactions now, per partition (high watermark - LSO)."""
        high = await self._end_offsets("read_uncommitted")
        stable = await self._end_offsets("read_committed")
        return {p: high[p] - stable[p] for p in high if high[p] > stable[p]}

    async def _end_offsets(self, isolation: str) -> dict[int, int]:
        ends = await self._ends[isolation].end_offsets(self._tps)
        return {tp.partition: int(offset) for tp, offset in ends.items()}

    async def catch_up(self, wait_s: float = 60) -> None:
        """Wait until everything on the topic now has been read."""
        mark = await self.mark()
        await self._until(
            lambda: all(self._positions.get(p, 0) >= o for p, o in mark.items()),
            wait_s,
            "not caught up",
        )

    async def wait_for(self, ids: set[str], wait_s: float, settle: float) -> None:
        """Wait until every id in `ids` has a reply, then read `settle` s more."""
        with contextlib.suppress(TimeoutError):
            await self._until(
                lambda: ids <= self._answered,
                wait_s,
                f"{len(ids - self._answered)} ids unanswered",
            )
        await asyncio.sleep(settle)
        await self.catch_up()

    def answered_before(self, mark: Mapping[int, int]) -> set[str]:
        """Correlation ids that had a reply below `mark` (read so far)."""
        return {
            r.correlation_id
            for r in self.replies
            if r.offset < mark.get(r.partition, 0)
        }

    def by_id(self) -> dict[str, list[Reply]]:
        """Every reply read, by correlation id."""
        grouped: dict[str, list[Reply]] = defaultdict(list)
        for r in self.replies:
            grouped[r.correlation_id].append(r)
        return dict(grouped)


@dataclass(frozen=True)
class Tally:
    """Every correlation id a test sent, accounted for against the replies read."""

    sent: int
    missing: frozenset[str]
    unknown: frozenset[str]
    #: Ids answered more than once, with their number of replies.
    duplicated: dict[str, int]

    @classmethod
    def of(cls, sent: Sent, replies: Mapping[str, Sequence[object]]) -> Tally:
        """Compare what was sent with the replies (by correlation id)."""
        counts = Counter({cid: len(rs) for cid, rs in replies.items()})
        return cls(
            sent=len(sent.records),
            missing=frozenset(sent.records.keys() - counts.keys()),
            unknown=frozenset(counts.keys() - sent.records.keys()),
            duplicated={cid: n for cid, n in counts.items() if n > 1},
        )

    def most_replies(self) -> int:
        """The most replies any one id got (1 without duplicates)."""
        return max(self.duplicated.values(), default=1)

    def __str__(self) -> str:
        return (
            f"{self.sent} sent, {len(self.missing)} unanswered, "
            f"{len(self.unknown)} unknown ids, {len(self.duplicated)} duplicated "
            f"(at most {self.most_replies()} replies to one id)"
        )


async def wait_rebalance(
    bootstrap: str, group: str, *, unless: asyncio.Future[Any]
) -> bool:
    """Wait until the group starts rebalancing (a member asked to join or left).

    The broker's view, so it does not depend on what a runner logs. False when
    `unless` finished first (the rebalance already done, or never coming).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        while not unless.done():
            [described] = await admin.describe_consumer_groups([group])
            _, _, state, *_ = described.groups[0]
            if state in ("PreparingRebalance", "CompletingRebalance"):
                return True
            await asyncio.sleep(0.05)
        return False
    finally:
        await admin.close()
