"""The Kafka side of the contract as pure functions: records in, records out.

Decode each request record into the shared `ChurnRequest`, or into a
dead-letter record that says why not; encode each result as a reply. No I/O
here, so every rule of the contract is unit-tested without a broker.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import ValidationError

from predictflow.contract import ChurnRequest, ChurnScore, ErrorReply

CORRELATION_ID = "correlation_id"
REPLY_TO = "reply_to"
MODEL_VERSION = "model_version"
# Kafka's own rule for topic names.
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_MAX_ERROR_MESSAGE = 1000

DeadLetterReason = Literal[
    "empty_value",
    "invalid_json",
    "validation_error",
    "missing_correlation_id",
    "invalid_reply_to",
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


@dataclass(frozen=True)
class Accepted:
    """A request that passed validation, with where to send its reply."""

    request: ChurnRequest
    correlation_id: str
    reply_to: str


@dataclass(frozen=True)
class Parsed:
    """A poll split into scoreable requests and dead letters."""

    accepted: list[Accepted]
    dead_letters: list[Outgoing]


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
    record: Record, reason: DeadLetterReason, message: str, dlq_topic: str
) -> Outgoing:
    """The dead-letter record of a poison record: original bytes, why, from where."""
    headers = [(k, v) for k, v in (record.headers or ()) if not k.startswith("error_")]
    headers += [
        ("error_type", reason.encode()),
        ("error_message", message[:_MAX_ERROR_MESSAGE].encode()),
        ("source_topic", record.topic.encode()),
        ("source_partition", str(record.partition).encode()),
        ("source_offset", str(record.offset).encode()),
    ]
    return Outgoing(
        topic=dlq_topic,
        key=record.key,
        value=record.value,
        headers=headers,
        kind="dead_letter",
        reason=reason,
    )


def _validation_message(exc: ValidationError) -> str:
    # Field locations and messages only: the offending input stays in the
    # record's own bytes, not repeated in a header.
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
        for err in exc.errors(include_input=False, include_url=False)
    )


def parse(records: Sequence[Record], default_reply_to: str, dlq_topic: str) -> Parsed:
    """Validate each record; the invalid ones become dead letters."""
    accepted: list[Accepted] = []
    dead: list[Outgoing] = []
    for record in records:
        correlation_id = _header(record, CORRELATION_ID)
        if correlation_id is None:
            dead.append(
                dead_letter(
                    record,
                    "missing_correlation_id",
                    f"a request needs a '{CORRELATION_ID}' header",
                    dlq_topic,
                )
            )
            continue
        reply_to = _header(record, REPLY_TO) or default_reply_to
        if not _TOPIC_NAME.match(reply_to):
            dead.append(
                dead_letter(
                    record,
                    "invalid_reply_to",
                    f"'{REPLY_TO}' is not a valid topic name: {reply_to[:100]!r}",
                    dlq_topic,
                )
            )
            continue
        if not record.value:
            dead.append(
                dead_letter(record, "empty_value", "the record has no value", dlq_topic)
            )
            continue
        try:
            # JSON mode, exactly as the REST API validates a body.
            request = ChurnRequest.model_validate_json(record.value)
        except ValidationError as exc:
            not_json = any(e["type"] == "json_invalid" for e in exc.errors())
            dead.append(
                dead_letter(
                    record,
                    "invalid_json" if not_json else "validation_error",
                    _validation_message(exc),
                    dlq_topic,
                )
            )
            continue
        accepted.append(Accepted(request, correlation_id, reply_to))
    return Parsed(accepted, dead)


def replies(
    accepted: Sequence[Accepted],
    results: Sequence[ChurnScore | ErrorReply],
    model_version: str,
) -> list[Outgoing]:
    """One reply per accepted request: its score or why it has none."""
    out = []
    for item, result in zip(accepted, results, strict=True):
        out.append(
            Outgoing(
                topic=item.reply_to,
                key=item.request.customer_id.encode(),
                value=result.model_dump_json().encode(),
                headers=[
                    (CORRELATION_ID, item.correlation_id.encode()),
                    (MODEL_VERSION, model_version.encode()),
                ],
                kind="score" if isinstance(result, ChurnScore) else "error",
                reason=None if isinstance(result, ChurnScore) else result.error,
            )
        )
    return out
