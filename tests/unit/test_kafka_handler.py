from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from consumers import handler
from predictflow.contract import ChurnScore, ErrorReply

DLQ = "churn-requests.dlq"
DEFAULT_REPLY = "churn-responses"


@dataclass
class FakeRecord:
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    key: bytes | None = b"7590-VHVEG"
    topic: str = "churn-requests"
    partition: int = 3
    offset: int = 42


def req(body: object, **headers: str) -> FakeRecord:
    value = body if isinstance(body, bytes) else json.dumps(body).encode()
    return FakeRecord(value, [(k, v.encode()) for k, v in headers.items()])


def parse(*records: FakeRecord) -> handler.Parsed:
    return handler.parse(records, DEFAULT_REPLY, DLQ)


def test_a_valid_request_is_accepted_with_its_reply_topic() -> None:
    parsed = parse(
        req({"customer_id": "7590-VHVEG"}, correlation_id="c1"),
        req(
            {"customer_id": "5575-GNVDE", "tenure": 3},
            correlation_id="c2",
            reply_to="my-replies",
        ),
    )
    assert parsed.dead_letters == []
    assert [a.correlation_id for a in parsed.accepted] == ["c1", "c2"]
    assert [a.reply_to for a in parsed.accepted] == [DEFAULT_REPLY, "my-replies"]
    assert parsed.accepted[1].request.tenure == 3


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (req({"customer_id": "a"}), "missing_correlation_id"),
        (req({"customer_id": "a"}, correlation_id="  "), "missing_correlation_id"),
        (FakeRecord(b"{", [("correlation_id", b"\xff\xfe")]), "missing_correlation_id"),
        (req(b"not json", correlation_id="c"), "invalid_json"),
        (req(b"\xff\xfe\x00", correlation_id="c"), "invalid_json"),
        (FakeRecord(None, [("correlation_id", b"c")]), "empty_value"),
        (
            req({"customer_id": "a", "tenure": "x"}, correlation_id="c"),
            "validation_error",
        ),
        (req({"customer_id": "a", "extra": 1}, correlation_id="c"), "validation_error"),
        (req([1, 2], correlation_id="c"), "validation_error"),
        (
            req({"customer_id": "a"}, correlation_id="c", reply_to="bad topic!"),
            "invalid_reply_to",
        ),
    ],
)
def test_poison_records_become_dead_letters(record: FakeRecord, reason: str) -> None:
    parsed = parse(record)
    assert parsed.accepted == []
    (dead,) = parsed.dead_letters
    headers = dict(dead.headers)
    assert dead.topic == DLQ
    assert dead.value == record.value  # the original bytes
    assert dead.key == record.key
    assert headers["error_type"] == reason.encode()
    assert headers["error_message"]
    assert headers["source_topic"] == b"churn-requests"
    assert headers["source_partition"] == b"3"
    assert headers["source_offset"] == b"42"


def test_validation_message_names_the_field_not_the_input() -> None:
    parsed = parse(req({"customer_id": "a", "tenure": "secret"}, correlation_id="c"))
    message = dict(parsed.dead_letters[0].headers)["error_message"].decode()
    assert "tenure" in message
    assert "secret" not in message


def test_order_and_mix_are_kept() -> None:
    parsed = parse(
        req({"customer_id": "a"}, correlation_id="1"),
        req(b"x", correlation_id="2"),
        req({"customer_id": "b"}, correlation_id="3"),
    )
    assert [a.correlation_id for a in parsed.accepted] == ["1", "3"]
    assert len(parsed.dead_letters) == 1


def test_replies_carry_correlation_id_model_version_and_key() -> None:
    parsed = parse(
        req({"customer_id": "a"}, correlation_id="1", reply_to="r1"),
        req({"customer_id": "b"}, correlation_id="2"),
    )
    results = [
        ChurnScore(customer_id="a", churn_probability=0.5, model_version="m:3"),
        ErrorReply(customer_id="b", error="unknown_customer", message="who?"),
    ]
    out = handler.replies(parsed.accepted, results, "m:3")
    assert [o.topic for o in out] == ["r1", DEFAULT_REPLY]
    assert [o.key for o in out] == [b"a", b"b"]
    assert [o.kind for o in out] == ["score", "error"]
    assert dict(out[0].headers) == {"correlation_id": b"1", "model_version": b"m:3"}
    assert ChurnScore.model_validate_json(out[0].value or b"") == results[0]
    assert ErrorReply.model_validate_json(out[1].value or b"") == results[1]
