"""The live Kafka client's accounting: every request by its correlation id.

`account` reads what tools/kafka-load wrote; its files are written here by
hand (the client itself runs against a real broker in
tests/integration/test_kafka_load.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench.kafka_bench import ReplyTally, account


def test_first_replies_count_and_the_rest_are_missing() -> None:
    tally = ReplyTally("run1", 4)
    tally.add_reply(b"run1:0", 1.0, error=False)
    tally.add_reply("run1:2", 2.0, error=False)
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
    tally.add_reply(b"run1:1", 1.0, error=False)
    tally.add_reply(b"run1:1", 5.0, error=False)
    assert tally.counts()["duplicates"] == 1
    assert tally.counts()["replied"] == 1
    assert tally.received[1] == 1.0


def test_an_error_reply_answers_its_request_and_is_counted_apart() -> None:
    tally = ReplyTally("run1", 2)
    tally.add_reply(b"run1:0", 1.0, error=True)
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
        tally.add_reply(cid, 1.0, error=False)
    assert tally.counts() == {
        "replied": 0,
        "error_replies": 0,
        "missing": 2,
        "duplicates": 0,
    }


def _load_files(
    out: Path,
    *,
    rate: int,
    sends_ns: list[int],
    replies: list[tuple[str, int, int]],
    failed: int = 0,
) -> None:
    """The three files of a kafka-load run (see tools/kafka-load/main.go)."""
    summary = {
        "run": "r1",
        "rate": rate,
        "sent": len(sends_ns),
        "send_seconds": len(sends_ns) / rate,
        "failed_sends": failed,
        "read_errors": 0,
        "cpu_seconds": 0.5,
        "wall_seconds": 2.0,
        "client": "franz-go (tools/kafka-load)",
    }
    Path(f"{out}.json").write_text(json.dumps(summary))
    np.asarray(sends_ns, dtype="<i8").tofile(f"{out}.sends")
    Path(f"{out}.replies").write_bytes(
        b"".join(f"{cid}\t{at}\t{err}\n".encode() for cid, at, err in replies)
    )


def test_a_load_run_accounts_for_every_request_by_id(tmp_path: Path) -> None:
    # 4 requests at 1,000/s (due at 0, 1, 2 and 3 ms): #0 answered twice, #1
    # with an error, #2 never, #3 once; a reply of another run is ignored.
    out = tmp_path / "live"
    _load_files(
        out,
        rate=1000,
        sends_ns=[0, 1_500_000, 2_000_000, 3_000_000],
        replies=[
            ("r1:0", 10_000_000, 0),
            ("r1:1", 12_000_000, 1),
            ("r0:2", 13_000_000, 0),
            ("r1:0", 14_000_000, 0),
            ("r1:3", 23_000_000, 0),
        ],
    )
    result = account(out)
    assert {k: result[k] for k in ("replied", "error_replies", "missing")} == {
        "replied": 3,
        "error_replies": 1,
        "missing": 1,
    }
    assert result["duplicates"] == 1
    assert result["sent"] == 4 and result["failed_sends"] == 0
    # From the scheduled send: 10, 11 and 20 ms (the duplicate's 14 is not one).
    assert result["latency_ms"]["max"] == pytest.approx(20.0)
    assert result["latency_ms"]["p50"] == pytest.approx(11.0)
    # From the actual send (#1 went out 0.5 ms late): 10, 10.5 and 20 ms.
    assert result["latency_from_send_ms"]["p50"] == pytest.approx(10.5)
    assert result["send_lag_ms"]["max"] == pytest.approx(0.5)
    assert result["client_cpu_pct"] == pytest.approx(25.0)


def test_requests_never_sent_count_as_failed_sends(tmp_path: Path) -> None:
    out = tmp_path / "live"
    _load_files(
        out, rate=1000, sends_ns=[0, -1], replies=[("r1:0", 5_000_000, 0)], failed=2
    )
    result = account(out)
    assert result["failed_sends"] == 3
    assert result["missing"] == 1
    assert result["send_lag_ms"]["max"] == pytest.approx(0.0)


def test_a_truncated_send_file_fails_the_run(tmp_path: Path) -> None:
    out = tmp_path / "live"
    _load_files(out, rate=1000, sends_ns=[0, 1_000_000], replies=[])
    np.asarray([0], dtype="<i8").tofile(f"{out}.sends")
    with pytest.raises(RuntimeError, match="1 send times for 2 requests"):
        account(out)
