"""An async request/reply client of the Kafka front door.

    async with ChurnClient("127.0.0.1:9092") as client:
        reply = await client.request(ChurnRequest(customer_id="7590-VHVEG"))

Replies are matched by the `correlation_id` header. The client reads the reply
topic from its end (no consumer group), so it sees only replies to requests
sent after it started. It connects as `settings` say (TLS, SASL: see
`consumers.security`) and creates missing topics only when
`settings.create_topics` is on, as the runner does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from pydantic import TypeAdapter

from consumers.security import client_security
from consumers.topics import ensure_topics
from predictflow.contract import ChurnRequest, ChurnResult
from predictflow.settings import KafkaSettings

log = logging.getLogger("predictflow.client")

_REPLY = TypeAdapter(ChurnResult)


class ChurnClient:
    """Send `ChurnRequest`s to Kafka and await their replies."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        settings: KafkaSettings | None = None,
        reply_topic: str | None = None,
        stream: bool = False,
    ) -> None:
        self.settings = (settings or KafkaSettings()).model_copy(
            update={"bootstrap_servers": bootstrap_servers}
        )
        self.bootstrap = bootstrap_servers
        self.reply_topic = reply_topic or self.settings.reply_topic
        self._waiting: dict[str, asyncio.Future[ChurnResult]] = {}
        # Only a client built with stream=True keeps every reply for replies().
        self._stream: asyncio.Queue[tuple[str, ChurnResult]] | None = (
            asyncio.Queue() if stream else None
        )
        self._producer: Any = None
        self._consumer: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ChurnClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect, and position the reply reader at the end of the reply topic."""
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        if self.settings.create_topics:
            await ensure_topics(self.settings, self.bootstrap)
        security = client_security(self.settings)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            **security,
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            **security,
        )
        await self._consumer.start()
        # The producer's partitions_for waits for the topic's metadata.
        partitions = await self._producer.partitions_for(self.reply_topic)
        tps = [TopicPartition(self.reply_topic, p) for p in partitions]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, before anything is sent
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        """Disconnect; requests still waiting fail with `CancelledError`."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()
        for fut in self._waiting.values():
            fut.cancel()

    async def send(
        self, request: ChurnRequest, correlation_id: str | None = None
    ) -> str:
        """Publish one request, acked by the broker; returns its correlation id."""
        cid = correlation_id or uuid.uuid4().hex
        await self._producer.send_and_wait(
            self.settings.request_topic,
            request.model_dump_json(exclude_none=True).encode(),
            key=request.customer_id.encode(),
            headers=[
                ("correlation_id", cid.encode()),
                ("reply_to", self.reply_topic.encode()),
            ],
        )
        return cid

    async def request(
        self, request: ChurnRequest, reply_timeout: float = 30.0
    ) -> ChurnResult:
        """Publish one request and wait for its reply."""
        cid = uuid.uuid4().hex
        fut: asyncio.Future[ChurnResult] = asyncio.get_running_loop().create_future()
        self._waiting[cid] = fut
        try:
            await self.send(request, cid)
            return await asyncio.wait_for(fut, reply_timeout)
        finally:
            self._waiting.pop(cid, None)

    async def replies(self) -> AsyncIterator[tuple[str, ChurnResult]]:
        """Every reply that arrives, as (correlation id, reply) (needs stream=True)."""
        if self._stream is None:
            raise RuntimeError("build the client with stream=True to read replies()")
        while True:
            yield await self._stream.get()

    async def _read(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    headers = dict(record.headers or ())
                    cid = headers.get("correlation_id", b"").decode()
                    try:
                        reply = _REPLY.validate_json(record.value)
                    except ValueError as exc:
                        log.warning(
                            "event=bad_reply correlation_id=%s error=%r", cid, exc
                        )
                        continue
                    fut = self._waiting.get(cid)
                    if fut is not None and not fut.done():
                        fut.set_result(reply)
                    if self._stream is not None:
                        self._stream.put_nowait((cid, reply))
