"""One bad record never stops its partition: each fault of issue #10 on a real broker.

For each fault a bad record is published, then a valid request with the same
key (so on the same partition, right behind it). The bad record must reach the
dead-letter topic with its reason, and the valid one must be answered, both
within seconds; nothing is answered twice; and after a restart of the runner
nothing is dead-lettered or answered again (the offsets were committed).
Run in both delivery modes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devtools.processes import ConsumerProcess, RedisServer, Workspace, wait_for
from devtools.topics import Topics
from predictflow.contract import ChurnScore, ErrorReply
from predictflow.data import load_telco
from tests.kafka_support import publish, read_all

CUSTOMERS = load_telco()["customer_id"].tolist()

#: Longest a bad record may hold its partition: seconds, not the 40 s or
#: forever of the faults this guards against.
WITHIN_S = 20.0
#: A customer whose stored row the model cannot encode (written by the fixture).
BAD_ROW = "9999-BADROW"
#: A reply topic whose own size limit refuses every reply.
TINY = "tiny-replies"
#: The dead-letter topic's size limit here, and the runner's limit under it.
DLQ_LIMIT = 300_000
RUNNER_LIMIT = 250_000


@dataclass
class Faulty:
    """A standalone runner on fresh topics, and where it logs."""

    bootstrap: str
    topics: Topics
    env: dict[str, str]
    mode: str
    runner: ConsumerProcess

    @property
    def read_committed(self) -> bool:
        return self.mode == "exactly_once"


def _write_bad_row(workspace: Workspace) -> None:
    """Store a row outside the contract, as another writer of the store might."""
    code = f"""
import pandas as pd
from datetime import UTC, datetime
from predictflow.data import load_telco
from predictflow.features import open_store
from predictflow.settings import get_settings

row = load_telco().iloc[[0]].copy()
row["customer_id"] = "{BAD_ROW}"
row["internet_service"] = "Satellite"
row["event_timestamp"] = row["created"] = datetime.now(UTC)
store = open_store(get_settings().feast)
store.write_to_online_store("customer_stats_fv", row)
"""
    subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], env=workspace.env, check=True, timeout=300
    )


async def _size_topics(bootstrap: str, topics: Topics) -> None:
    """A reply topic that refuses every reply; a dead-letter topic of 300 kB."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            # Room for a transaction marker (~80 bytes), none for a reply.
            [
                NewTopic(
                    f"{topics.group}-{TINY}",
                    1,
                    1,
                    topic_configs={"max.message.bytes": "128"},
                )
            ]
        )
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    topics.dlq,
                    {"max.message.bytes": str(DLQ_LIMIT)},
                )
            ]
        )
    finally:
        await admin.close()


@pytest.fixture(scope="module", params=["at_least_once", "exactly_once"])
def faulty(
    request: pytest.FixtureRequest, workspace: Workspace, kafka_bootstrap: str
) -> Iterator[Faulty]:
    mode = request.param
    topics = Topics.fresh(f"faults-{mode}", kafka_bootstrap)
    asyncio.run(_size_topics(kafka_bootstrap, topics))
    _write_bad_row(workspace)
    env = {
        **workspace.env,
        **topics.env(kafka_bootstrap),
        "PREDICTFLOW_KAFKA__EXACTLY_ONCE": str(mode == "exactly_once").lower(),
        "PREDICTFLOW_KAFKA__INSTANCE_ID": topics.group,
        "PREDICTFLOW_KAFKA__MAX_MESSAGE_BYTES": str(RUNNER_LIMIT),
    }
    logs = workspace.root / "consumers" / topics.group
    logs.mkdir(parents=True)
    runner = _start(env, logs / "runner.log")
    faulty = Faulty(kafka_bootstrap, topics, env, mode, runner)
    yield faulty
    if faulty.runner.proc.poll() is None:
        faulty.runner.kill()


def _start(env: dict[str, str], log: Path) -> ConsumerProcess:
    """A runner that owns its partitions; killed if it never gets there."""
    runner = ConsumerProcess(env, log)
    try:
        return runner.wait_assigned()
    except BaseException:
        runner.kill()
        raise


async def _publish(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes, bytes | None, dict[str, str]]],
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=2_000_000
    )
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(
                topic,
                value,
                key=key,
                headers=[(k, v.encode()) for k, v in headers.items()],
            )
    finally:
        await producer.stop()


def _bad_then_good(
    f: Faulty, key: str, value: bytes | None, **headers: str
) -> tuple[str, str]:
    """Publish a bad record and a valid request behind it; their correlation ids."""
    bad, good = f"bad-{uuid.uuid4().hex}", f"good-{uuid.uuid4().hex}"
    valid = json.dumps({"customer_id": "7590-VHVEG"}).encode()
    asyncio.run(
        _publish(
            f.bootstrap,
            f.topics.request,
            [
                (key.encode(), value, {"correlation_id": bad, **headers}),
                (key.encode(), valid, {"correlation_id": good}),
            ],
        )
    )
    return bad, good


def _dead(f: Faulty, ids: set[str] | None) -> dict[str, list[dict[str, bytes]]]:
    """Dead letters by correlation id: until `ids` are seen, or all within 5 s."""
    seen = asyncio.run(
        read_all(
            f.bootstrap,
            f.topics.dlq,
            until=ids,
            wait_s=WITHIN_S if ids else 5.0,
            read_committed=f.read_committed,
        )
    )
    return {cid: [h for _, h in records] for cid, records in seen.items()}


def _replies(
    f: Faulty, ids: set[str] | None, settle: float = 0.0
) -> dict[str, list[tuple[dict[str, object], dict[str, bytes]]]]:
    """Replies by correlation id: until `ids` are seen, or all within 5 s."""
    return asyncio.run(
        read_all(
            f.bootstrap,
            f.topics.reply,
            until=ids,
            wait_s=WITHIN_S if ids else 5.0,
            read_committed=f.read_committed,
            settle=settle,
        )
    )


def _assert_dead_lettered_and_next_answered(
    f: Faulty, bad: str, good: str, reason: str
) -> dict[str, bytes]:
    dead = _dead(f, {bad})
    assert bad in dead, (
        f"{reason}: not dead-lettered in {WITHIN_S}s\n" + (f.runner.logs()[-3000:])
    )
    assert len(dead[bad]) == 1, f"{reason}: dead-lettered {len(dead[bad])} times"
    headers = dead[bad][0]
    assert headers["error_type"].decode() == reason
    assert headers["source_topic"].decode() == f.topics.request
    replies = _replies(f, {good}, settle=2.0)
    assert good in replies, f"the request behind a {reason} was not answered"
    assert len(replies[good]) == 1, f"{len(replies[good])} replies to one request"
    ChurnScore.model_validate(replies[good][0][0])
    return headers


def test_a_reply_topic_that_does_not_exist(faulty: Faulty) -> None:
    bad, good = _bad_then_good(
        faulty, "k-missing", b'{"customer_id": "7590-VHVEG"}', reply_to="nobody-replies"
    )
    _assert_dead_lettered_and_next_answered(faulty, bad, good, "reply_topic_missing")


@pytest.mark.parametrize("name", [".", ".."])
def test_a_reply_topic_kafka_refuses_to_name(faulty: Faulty, name: str) -> None:
    bad, good = _bad_then_good(
        faulty, f"k-{len(name)}", b'{"customer_id": "7590-VHVEG"}', reply_to=name
    )
    _assert_dead_lettered_and_next_answered(faulty, bad, good, "reply_topic_invalid")


@pytest.mark.parametrize("target", ["__consumer_offsets", "request_topic"])
def test_a_reply_topic_outside_the_allow_list(faulty: Faulty, target: str) -> None:
    topic = faulty.topics.request if target == "request_topic" else target
    bad, good = _bad_then_good(
        faulty, f"k-{target}", b'{"customer_id": "7590-VHVEG"}', reply_to=topic
    )
    _assert_dead_lettered_and_next_answered(faulty, bad, good, "reply_topic_forbidden")


def test_a_reply_the_broker_refuses_is_dead_lettered(faulty: Faulty) -> None:
    """The reply topic exists and is allowed, but the broker refuses the reply."""
    bad, good = _bad_then_good(
        faulty,
        "k-tiny",
        b'{"customer_id": "7590-VHVEG"}',
        reply_to=f"{faulty.topics.group}-{TINY}",
    )
    _assert_dead_lettered_and_next_answered(faulty, bad, good, "record_too_large")


def test_a_record_too_large_for_the_dead_letter_topic_is_truncated(
    faulty: Faulty,
) -> None:
    """Its copy, with the error headers, would not fit: it is cut, and says so."""
    value = b"{" + b" " * (DLQ_LIMIT + 100_000)
    bad, good = _bad_then_good(faulty, "k-large", value, padding="p" * 10_000)
    headers = _assert_dead_lettered_and_next_answered(faulty, bad, good, "invalid_json")
    assert headers["dlq_truncated"] == b"true"
    assert int(headers["original_size"]) == len(value)
    assert headers["original_sha256"].decode() == hashlib.sha256(value).hexdigest()


def test_a_stored_row_the_model_cannot_encode(faulty: Faulty) -> None:
    body = json.dumps({"customer_id": BAD_ROW}).encode()
    bad, good = _bad_then_good(faulty, BAD_ROW, body)
    _assert_dead_lettered_and_next_answered(faulty, bad, good, "scoring_failed")
    # Its requester is told too, without the cause.
    (reply,) = _replies(faulty, {bad})[bad]
    error = ErrorReply.model_validate(reply[0])
    assert error.error == "internal_error" and "Satellite" not in error.message


def test_after_a_restart_nothing_is_dead_lettered_or_answered_again(
    faulty: Faulty,
) -> None:
    before_dead = _dead(faulty, None)
    before_replies = _replies(faulty, None)
    assert before_dead and before_replies, "run after the fault tests of this module"
    assert faulty.runner.terminate() == 0
    faulty.runner = _start(
        faulty.env, faulty.runner.log_path.with_name("restarted.log")
    )
    marker = f"after-{uuid.uuid4().hex}"
    asyncio.run(
        _publish(
            faulty.bootstrap,
            faulty.topics.request,
            [
                (
                    b"k-after",
                    b'{"customer_id": "7590-VHVEG"}',
                    {"correlation_id": marker},
                )
            ],
        )
    )
    after_replies = _replies(faulty, {marker}, settle=2.0)
    assert marker in after_replies
    after_dead = _dead(faulty, None)
    for cid, records in before_dead.items():
        assert len(after_dead[cid]) == len(records) == 1, cid
    for cid, replies in before_replies.items():
        assert len(after_replies[cid]) == len(replies), cid
    assert faulty.runner.terminate() == 0


def _replica_of(primary: str, workdir: Path) -> RedisServer:
    """A Redis of this test's own with the primary's data (it may be stopped)."""
    import redis

    own = RedisServer(workdir)
    client = redis.Redis(port=own.port)
    host, port = primary.split(":")
    client.replicaof(host, int(port))
    wait_for(
        lambda: (
            client.info("replication")["master_link_status"] == "up"
            and client.dbsize() > 0
        ),
        30,
        "the replica's first sync",
    )
    client.replicaof("NO", "ONE")
    client.close()
    return own


def test_a_feature_store_outage_pauses_consumption_and_resumes(
    redis_workspace: Workspace, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Requests in an outage get retryable errors or wait; none is lost or doubled."""
    topics = Topics.fresh("outage", kafka_bootstrap)
    primary = redis_workspace.env["PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING"]
    own = _replica_of(primary, tmp_path / "redis")
    env = {
        **redis_workspace.env,
        **topics.env(kafka_bootstrap),
        "PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING": own.address,
        "PREDICTFLOW_KAFKA__INSTANCE_ID": topics.group,
    }
    runner = _start(env, tmp_path / "runner.log")
    try:
        before = asyncio.run(publish(kafka_bootstrap, topics.request, CUSTOMERS[:20]))
        assert set(before.records) <= set(
            asyncio.run(
                read_all(kafka_bootstrap, topics.reply, until=set(before.records))
            )
        )
        os.kill(own.proc.pid, signal.SIGSTOP)
        try:
            during = asyncio.run(
                publish(kafka_bootstrap, topics.request, CUSTOMERS[20:50], rate=10)
            )
            wait_for(
                lambda: "event=feature_store_down" in runner.logs(),
                60,
                "the runner to see the outage",
            )
        finally:
            os.kill(own.proc.pid, signal.SIGCONT)
        ids = set(before.records) | set(during.records)
        replies = asyncio.run(
            read_all(kafka_bootstrap, topics.reply, until=ids, wait_s=120, settle=2.0)
        )
    finally:
        logs = runner.logs()
        runner.terminate()
        own.stop()
    assert ids <= set(replies), f"{len(ids - set(replies))} requests lost"
    assert not {cid for cid in ids if len(replies[cid]) > 1}, "replies repeated"
    kinds: dict[str, int] = {}
    for cid in during.records:
        body = replies[cid][0][0]
        if "error" in body:
            error = ErrorReply.model_validate(body)
            assert error.error == "feature_store_unavailable" and error.retryable
            kinds["error"] = kinds.get("error", 0) + 1
        else:
            ChurnScore.model_validate(body)
            kinds["score"] = kinds.get("score", 0) + 1
    # Some were told to retry; the rest waited and were scored once it was back.
    assert kinds.get("error") and kinds.get("score"), kinds
    assert "event=feature_store_back" in logs
