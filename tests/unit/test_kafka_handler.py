from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from consumers import handler
from predictflow.contract import ChurnScore, ErrorReply

DLQ = "churn-requests.dlq"
DEFAULT_REPLY = "churn-responses"
ROUTES = handler.Routes(
    default_reply_to=DEFAULT_REPLY, dlq=DLQ, request_topic="churn-requests"
)


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
    return handler.parse(records, ROUTES)


def test_a_valid_request_is_accepted_with_its_reply_topic() -> None:
    parsed = parse(
        req({"customer_id": "7590-VHVEG"}, correlation_id="c1"),
        req(
            {"customer_id": "5575-GNVDE", "tenure": 3},
            correlation_id="c2",
            reply_to="my-replies",
        ),
        req({"customer_id": "a"}, correlation_id="c3", reply_to="billing.responses"),
    )
    assert parsed.dead_letters == []
    assert [a.correlation_id for a in parsed.accepted] == ["c1", "c2", "c3"]
    assert [a.reply_to for a in parsed.accepted] == [
        DEFAULT_REPLY,
        "my-replies",
        "billing.responses",
    ]
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
            "reply_topic_invalid",
        ),
        # Kafka refuses these two names although every character is legal.
        (
            req({"customer_id": "a"}, correlation_id="c", reply_to="."),
            "reply_topic_invalid",
        ),
        (
            req({"customer_id": "a"}, correlation_id="c", reply_to=".."),
            "reply_topic_invalid",
        ),
        (
            req({"customer_id": "a"}, correlation_id="c", reply_to="x" * 250),
            "reply_topic_invalid",
        ),
        # Not on the allow-list: internal topics, our own topics, anything else.
        (
            req(
                {"customer_id": "a"}, correlation_id="c", reply_to="__consumer_offsets"
            ),
            "reply_topic_forbidden",
        ),
        (
            req({"customer_id": "a"}, correlation_id="c", reply_to="__x-replies"),
            "reply_topic_forbidden",
        ),
        (
            req({"customer_id": "a"}, correlation_id="c", reply_to="churn-requests"),
            "reply_topic_forbidden",
        ),
        (
            req({"customer_id": "a"}, correlation_id="c", reply_to=DLQ),
            "reply_topic_forbidden",
        ),
        (
            req({"customer_id": "a"}, correlation_id="c", reply_to="payments"),
            "reply_topic_forbidden",
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
        req({"customer_id": "a"}, correlation_id="1", reply_to="r1-replies"),
        req({"customer_id": "b"}, correlation_id="2"),
    )
    results = [
        ChurnScore(customer_id="a", churn_probability=0.5, model_version="m:3"),
        ErrorReply(customer_id="b", error="unknown_customer", message="who?"),
    ]
    out = handler.replies(parsed.accepted, results, "m:3", ROUTES)
    assert [o.topic for o in out] == ["r1-replies", DEFAULT_REPLY]
    assert [o.key for o in out] == [b"a", b"b"]
    assert [o.kind for o in out] == ["score", "error"]
    assert dict(out[0].headers) == {"correlation_id": b"1", "model_version": b"m:3"}
    assert ChurnScore.model_validate_json(out[0].value or b"") == results[0]
    assert ErrorReply.model_validate_json(out[1].value or b"") == results[1]


def test_a_custom_pattern_replaces_the_default_allow_list() -> None:
    routes = handler.Routes(DEFAULT_REPLY, DLQ, "churn-requests", pattern=r"team-a\..+")
    assert routes.refuse("team-a.inbox") is None
    assert routes.refuse(DEFAULT_REPLY) is None
    refused = routes.refuse("my-replies")
    assert refused is not None and refused[0] == "reply_topic_forbidden"


def test_a_dead_letter_over_the_limit_is_truncated_and_says_so() -> None:
    import hashlib

    value = b"x" * 999_000
    record = FakeRecord(value, [("correlation_id", b"c"), ("big", b"y" * 5000)])
    (dead,) = parse(record).dead_letters
    headers = dict(dead.headers)
    size = len(dead.key or b"") + len(dead.value or b"")
    size += sum(len(k) + len(v) for k, v in dead.headers)
    assert size <= ROUTES.max_message_bytes - 1024
    assert headers["error_type"] == b"invalid_json"
    assert headers["correlation_id"] == b"c"  # small headers stay
    assert "big" not in headers
    assert headers["dlq_truncated"] == b"true"
    assert headers["original_size"] == str(len(value)).encode()
    assert headers["original_sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert value.startswith(dead.value or b"-")


def test_a_small_dead_letter_is_not_truncated() -> None:
    (dead,) = parse(req(b"x" * 1000, correlation_id="c")).dead_letters
    assert "dlq_truncated" not in dict(dead.headers)
    assert dead.value == b"x" * 1000


def test_a_request_whose_scoring_failed_is_answered_and_dead_lettered() -> None:
    parsed = parse(req({"customer_id": "a"}, correlation_id="1"))
    failed = ErrorReply(customer_id="a", error="internal_error", message="failed")
    reply, dead = handler.replies(parsed.accepted, [failed], "m:3", ROUTES)
    assert reply.topic == DEFAULT_REPLY and reply.kind == "error"
    assert dead.topic == DLQ and dead.reason == "scoring_failed"
    assert dict(dead.headers)["source_offset"] == b"42"
    assert dead.value == parsed.accepted[0].record.value
