"""The Kafka side of the contract as pure functions: records in, records out.

Decode each request record into the shared `ChurnRequest`, or into a
dead-letter record that says why not; encode each result as a reply. No I/O
here, so every rule of the contract is unit-tested without a broker.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import ValidationError

from predictflow.contract import ChurnRequest, ChurnScore, ErrorReply

CORRELATION_ID = "correlation_id"
REPLY_TO = "reply_to"
MODEL_VERSION = "model_version"
# Kafka's own rule for topic names (and neither "." nor "..").
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_MAX_ERROR_MESSAGE = 1000
#: Room left in a produced record for the batch and record framing.
_FRAMING_BYTES = 1024

DeadLetterReason = Literal[
    "empty_value",
    "invalid_json",
    "validation_error",
    "missing_correlation_id",
    "reply_topic_invalid",
    "reply_topic_forbidden",
    "reply_topic_missing",
    "record_too_large",
    "scoring_failed",
]


class Record(Protocol):
    """What the handler reads of a consumed record (aiokafka's ConsumerRecord)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True)
class Outgoing:
    """A record to produce: a reply or a dead letter."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    kind: Literal["score", "error", "dead_letter"]
    reason: str | None = None
    #: The request record this answers: a reply that cannot be delivered is
    #: dead-lettered from it.
    source: Record | None = None
    correlation_id: str | None = None


@dataclass(frozen=True)
class Accepted:
    """A request that passed validation, with where to send its reply."""

    request: ChurnRequest
    correlation_id: str
    reply_to: str
    record: Record


@dataclass(frozen=True)
class Parsed:
    """A poll split into scoreable requests and dead letters."""

    accepted: list[Accepted]
    dead_letters: list[Outgoing]


@dataclass(frozen=True)
class Routes:
    """Where replies may go and dead letters do: the reply_to allow-list.

    A request may name the default reply topic, or a topic whose name fully
    matches `pattern`; never a Kafka internal topic (`__...`), the request
    topic or the dead-letter topic, so no producer can make the runner write
    into a topic it was not meant to (an open redirect).
    """

    default_reply_to: str
    dlq: str
    request_topic: str = ""
    pattern: str = r"[A-Za-z0-9._-]+[-.](replies|responses)"
    max_message_bytes: int = 1_000_000

    def refuse(self, topic: str) -> tuple[DeadLetterReason, str] | None:
        """Why a request may not be answered on `topic`, or None if it may."""
        if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
            return (
                "reply_topic_invalid",
                f"'{REPLY_TO}' is not a valid Kafka topic name: {topic[:100]!r}",
            )
        if topic == self.default_reply_to:
            return None
        if (
            topic.startswith("__")
            or topic in (self.request_topic, self.dlq)
            or not re.fullmatch(self.pattern, topic)
        ):
            return (
                "reply_topic_forbidden",
                f"'{REPLY_TO}' names a topic replies may not go to: {topic!r} "
                f"(allowed: {self.default_reply_to!r} or names matching "
                f"{self.pattern!r})",
            )
        return None


def _header(record: Record, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            try:
                text = value.decode("utf-8").strip()
            except (UnicodeDecodeError, AttributeError):
                return None
            return text or None
    return None


def dead_letter(
    record: Record,
    reason: DeadLetterReason,
    message: str,
    dlq_topic: str,
    max_bytes: int = 1_000_000,
) -> Outgoing:
    """The dead-letter record of a record: original bytes, why, from where.

    A copy that would be larger than `max_bytes` (the original near the
    broker's limit, plus these headers) keeps only the first bytes of the
    value that fit, and says so: `dlq_truncated`, `original_size`,
    `original_sha256`. A dead letter is always small enough to be produced.
    """
    ours = ("error_", "source_", "dlq_", "original_")
    headers = [(k, v) for k, v in (record.headers or ()) if not k.startswith(ours)]
    headers += [
        ("error_type", reason.encode()),
        ("error_message", message[:_MAX_ERROR_MESSAGE].encode()),
        ("source_topic", record.topic.encode()),
        ("source_partition", str(record.partition).encode()),
        ("source_offset", str(record.offset).encode()),
    ]
    key, value = record.key, record.value
    size = len(key or b"") + len(value or b"")
    size += sum(len(k) + len(v) for k, v in headers) + _FRAMING_BYTES
    if size > max_bytes:
        # The request's own large headers go first (they can be as large as
        # the value; small ones such as correlation_id stay); then the value
        # keeps what room is left.
        headers = [h for h in headers[:-5] if len(h[0]) + len(h[1]) <= 256] + (
            headers[-5:]
        )
        key = (key or b"")[:256] or None
        room = max_bytes - _FRAMING_BYTES - 512 - len(key or b"")
        room -= sum(len(k) + len(v) for k, v in headers)
        original = value or b""
        headers += [
            ("dlq_truncated", b"true"),
            ("original_size", str(len(original)).encode()),
            ("original_sha256", hashlib.sha256(original).hexdigest().encode()),
        ]
        value = original[: max(room, 0)]
    return Outgoing(
        topic=dlq_topic,
        key=key,
        value=value,
        headers=headers,
        kind="dead_letter",
        reason=reason,
        source=record,
        correlation_id=_header(record, CORRELATION_ID),
    )


def _validation_message(exc: ValidationError) -> str:
    # Field locations and messages only: the offending input stays in the
    # record's own bytes, not repeated in a header.
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
        for err in exc.errors(include_input=False, include_url=False)
    )


def parse(records: Sequence[Record], routes: Routes) -> Parsed:
    """Validate each record; the invalid ones become dead letters."""
    accepted: list[Accepted] = []
    dead: list[Outgoing] = []

    def refuse(record: Record, reason: DeadLetterReason, message: str) -> None:
        dead.append(
            dead_letter(record, reason, message, routes.dlq, routes.max_message_bytes)
        )

    for record in records:
        correlation_id = _header(record, CORRELATION_ID)
        if correlation_id is None:
            refuse(
                record,
                "missing_correlation_id",
                f"a request needs a '{CORRELATION_ID}' header",
            )
            continue
        reply_to = _header(record, REPLY_TO) or routes.default_reply_to
        if refused := routes.refuse(reply_to):
            refuse(record, *refused)
            continue
        if not record.value:
            refuse(record, "empty_value", "the record has no value")
            continue
        try:
            # JSON mode, exactly as the REST API validates a body.
            request = ChurnRequest.model_validate_json(record.value)
        except ValidationError as exc:
            not_json = any(e["type"] == "json_invalid" for e in exc.errors())
            refuse(
                record,
                "invalid_json" if not_json else "validation_error",
                _validation_message(exc),
            )
            continue
        accepted.append(Accepted(request, correlation_id, reply_to, record))
    return Parsed(accepted, dead)


def replies(
    accepted: Sequence[Accepted],
    results: Sequence[ChurnScore | ErrorReply],
    model_version: str,
    routes: Routes,
) -> list[Outgoing]:
    """One reply per accepted request: its score or why it has none.

    A request whose scoring failed (`internal_error`) gets its error reply
    and is also dead-lettered (`scoring_failed`), so operators have the
    record that failed.
    """
    out = []
    for item, result in zip(accepted, results, strict=True):
        failed = isinstance(result, ErrorReply) and result.error == "internal_error"
        out.append(
            Outgoing(
                topic=item.reply_to,
                key=item.request.customer_id.encode(),
                value=result.model_dump_json().encode(),
                headers=[
                    (CORRELATION_ID, item.correlation_id.encode()),
                    # The version that scored this request: a swap between two
                    # polls must not mislabel a reply.
                    (
                        MODEL_VERSION,
                        (
                            result.model_version
                            if isinstance(result, ChurnScore)
                            else model_version
                        ).encode(),
                    ),
                ],
                kind="score" if isinstance(result, ChurnScore) else "error",
                reason=None if isinstance(result, ChurnScore) else result.error,
                source=item.record,
                correlation_id=item.correlation_id,
            )
        )
        if failed:
            out.append(
                dead_letter(
                    item.record,
                    "scoring_failed",
                    "the request was valid but scoring it raised; the cause is "
                    "in the runner's log",
                    routes.dlq,
                    routes.max_message_bytes,
                )
            )
    return out
