"""The live Kafka client's accounting: every request by its correlation id."""

from __future__ import annotations

import math
from types import SimpleNamespace

import confluent_kafka
import pytest

from bench.kafka_bench import ReplyTally, latency


def test_first_replies_count_and_the_rest_are_missing() -> None:
    tally = ReplyTally("run1", 4)
    tally.add(b"run1:0", b'{"churn_probability": 0.1}', 1.0)
    tally.add("run1:2", b'{"churn_probability": 0.2}', 2.0)
    assert tally.counts() == {
        "replied": 2,
        "error_replies": 0,
        "missing": 2,
        "duplicates": 0,
    }
    assert tally.remaining == 2
    assert tally.received[0] == 1.0 and tally.received[2] == 2.0
    assert math.isnan(tally.received[1]) and math.isnan(tally.received[3])


def test_a_second_reply_is_a_duplicate_and_keeps_the_first_receipt() -> None:
    tally = ReplyTally("run1", 2)
    tally.add(b"run1:1", b"{}", 1.0)
    tally.add(b"run1:1", b"{}", 5.0)
    assert tally.counts()["duplicates"] == 1
    assert tally.counts()["replied"] == 1
    assert tally.received[1] == 1.0


def test_an_error_reply_answers_its_request_and_is_counted_apart() -> None:
    tally = ReplyTally("run1", 2)
    tally.add(b"run1:0", b'{"error": {"code": "unknown_customer"}}', 1.0)
    assert tally.counts() == {
        "replied": 1,
        "error_replies": 1,
        "missing": 1,
        "duplicates": 0,
    }


def test_replies_of_other_runs_or_without_an_id_of_this_run_are_ignored() -> None:
    tally = ReplyTally("run1", 2)
    foreign = (b"run0:0", None, b"", b"run1", b"run1:x", "run1:²", b"run1:2")
    for cid in (*foreign, b"run1:-1"):
        tally.add(cid, b"{}", 1.0)
    assert tally.counts() == {
        "replied": 0,
        "error_replies": 0,
        "missing": 2,
        "duplicates": 0,
    }


class _Topics:
    def __init__(self, topic: str) -> None:
        self.topics = {topic: SimpleNamespace(partitions={0: None, 1: None})}


class _FailingConsumer:
    """A consumer whose first poll fails: the reply reader dies at once."""

    def __init__(self, config: dict[str, object]) -> None:
        pass

    def list_topics(self, topic: str, timeout: float) -> _Topics:
        return _Topics(topic)

    def get_watermark_offsets(self, tp: object, timeout: float) -> tuple[int, int]:
        return (0, 0)

    def assign(self, partitions: list[object]) -> None:
        pass

    def poll(self, timeout: float) -> None:
        raise RuntimeError("broker gone")

    def close(self) -> None:
        pass


class _Producer:
    def __init__(self, config: dict[str, object]) -> None:
        self.produced = 0
        _Producer.last = self

    def list_topics(self, topic: str, timeout: float) -> _Topics:
        return _Topics(topic)

    def produce(self, *args: object, **kwargs: object) -> None:
        self.produced += 1

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def test_a_reply_reader_that_dies_fails_the_run_and_stops_the_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not every request counted lost after a silent death: the run fails,
    # for the harness to report the section not met with the reason.
    monkeypatch.setattr(confluent_kafka, "Consumer", _FailingConsumer)
    monkeypatch.setattr(confluent_kafka, "Producer", _Producer)
    with pytest.raises(RuntimeError, match="reply reader failed"):
        latency("b", "req", "rep", ["c1"], rate=1000, duration_s=2, drain_s=0.1)
    assert _Producer.last.produced < 1000
