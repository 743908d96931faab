"""The Kafka request/reply path on a real Apache Kafka broker."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from consumers.client import ChurnClient
from devtools.processes import BentoServer, ConsumerProcess, KafkaBroker, Workspace
from devtools.topics import Topics
from predictflow.contract import ChurnRequest, ChurnScore, ErrorReply
from predictflow.data import load_telco
from predictflow.settings import KafkaSettings
from tests.kafka_support import (
    ReplyWatch,
    Sent,
    Stream,
    Tally,
    committed_offsets,
    publish,
    read_all,
    wait_rebalance,
)

CUSTOMERS = load_telco()["customer_id"].tolist()


def _ids(n: int) -> list[str]:
    return list(itertools.islice(itertools.cycle(CUSTOMERS), n))


# -- the runner inside the BentoML service ---------------------------------


@pytest.fixture(scope="module")
def kafka_topics(kafka_bootstrap: str) -> Topics:
    return Topics.fresh("svc", kafka_bootstrap)


@pytest.fixture(scope="module")
def kafka_server(
    workspace: Workspace, kafka_bootstrap: str, kafka_topics: Topics
) -> Iterator[BentoServer]:
    srv = BentoServer(workspace, "kafka", kafka_topics.env(kafka_bootstrap)).wait()
    try:
        # Ready for REST; wait until the runner answers on Kafka too.
        warmup = asyncio.run(_roundtrip(kafka_bootstrap, kafka_topics, ["7590-VHVEG"]))
        assert len(warmup) == 1, srv.logs()[-3000:]
        yield srv
    finally:
        srv.stop()


async def _roundtrip(
    bootstrap: str, topics: Topics, customer_ids: list[str], wait_s: float = 120
) -> dict[str, list[tuple[dict[str, object], dict[str, bytes]]]]:
    sent = await publish(bootstrap, topics.request, customer_ids)
    replies = await read_all(
        bootstrap, topics.reply, until=set(sent.records), wait_s=wait_s
    )
    return {cid: replies[cid] for cid in sent.records if cid in replies}


def test_a_thousand_requests_get_their_replies_equal_to_rest(
    kafka_server: BentoServer, kafka_bootstrap: str, kafka_topics: Topics
) -> None:
    ids = CUSTOMERS[:1000]
    sent = asyncio.run(publish(kafka_bootstrap, kafka_topics.request, ids))
    replies = asyncio.run(
        read_all(kafka_bootstrap, kafka_topics.reply, until=set(sent.records))
    )
    rest: dict[str, float] = {}
    for start in range(0, len(ids), 250):
        body = {"requests": [{"customer_id": c} for c in ids[start : start + 250]]}
        r = httpx.post(f"{kafka_server.url}/predict_batch", json=body, timeout=60)
        assert r.status_code == 200, r.text
        rest.update(
            (x["customer_id"], x["churn_probability"]) for x in r.json()["results"]
        )
    assert set(sent.records) <= set(replies), "some requests got no reply"
    for correlation_id, (customer_id, _, _) in sent.records.items():
        body, headers = replies[correlation_id][0]
        score = ChurnScore.model_validate(body)
        assert score.customer_id == customer_id
        assert headers["model_version"].decode() == score.model_version
        assert abs(score.churn_probability - rest[customer_id]) <= 1e-6


def test_poison_records_are_dead_lettered_and_valid_ones_answered(
    kafka_server: BentoServer, kafka_bootstrap: str, kafka_topics: Topics
) -> None:
    async def scenario() -> tuple[dict[str, str], set[str], str]:
        poison = {
            "invalid_json": (b"{not json", [("correlation_id", b"p1")]),
            "validation_error": (
                json.dumps({"customer_id": "7590-VHVEG", "tenure": "x"}).encode(),
                [("correlation_id", b"p2")],
            ),
            "missing_correlation_id": (
                json.dumps({"customer_id": "7590-VHVEG"}).encode(),
                [],
            ),
            "empty_value": (None, [("correlation_id", b"p4")]),
            "reply_topic_invalid": (
                json.dumps({"customer_id": "7590-VHVEG"}).encode(),
                [("correlation_id", b"p5"), ("reply_to", b"no such/topic")],
            ),
        }
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        marker = uuid.uuid4().hex
        valid: set[str] = set()
        try:
            for i, (kind, (value, headers)) in enumerate(poison.items()):
                await producer.send_and_wait(
                    kafka_topics.request,
                    value,
                    key=b"7590-VHVEG",
                    headers=[*headers, ("test_marker", f"{marker}-{kind}".encode())],
                )
                cid = f"valid-{marker}-{i}"
                valid.add(cid)
                await producer.send_and_wait(
                    kafka_topics.request,
                    json.dumps({"customer_id": CUSTOMERS[i]}).encode(),
                    key=CUSTOMERS[i].encode(),
                    headers=[("correlation_id", cid.encode())],
                )
            unknown = f"unknown-{marker}"
            await producer.send_and_wait(
                kafka_topics.request,
                json.dumps({"customer_id": "0000-NOBODY"}).encode(),
                headers=[("correlation_id", unknown.encode())],
            )
        finally:
            await producer.stop()
        return {k: f"{marker}-{k}" for k in poison}, valid, unknown

    markers, valid, unknown = asyncio.run(scenario())
    replies = asyncio.run(
        read_all(kafka_bootstrap, kafka_topics.reply, until={*valid, unknown})
    )
    assert valid <= set(replies)
    for cid in valid:
        assert "churn_probability" in replies[cid][0][0]
    error = ErrorReply.model_validate(replies[unknown][0][0])
    assert error.error == "unknown_customer"

    dead = asyncio.run(read_all(kafka_bootstrap, kafka_topics.dlq, wait_s=30))
    by_marker = {
        headers.get("test_marker", b"").decode(): headers
        for records in dead.values()
        for _, headers in records
    }
    for kind, marker in markers.items():
        headers = by_marker.get(marker)
        assert headers is not None, f"{kind} was not dead-lettered"
        assert headers["error_type"].decode() == kind
        assert headers["error_message"]
        assert headers["source_topic"].decode() == kafka_topics.request
        assert int(headers["source_partition"]) >= 0
        assert int(headers["source_offset"]) >= 0


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_requests_are_answered(
    kafka_server: BentoServer, kafka_bootstrap: str, kafka_topics: Topics, codec: str
) -> None:
    """Every compression codec a Kafka producer may use is read, not rewound forever.

    Java clients often compress (lz4, snappy, zstd). A batch in a codec the
    runner cannot decode fails every poll of its runner, which rewinds and
    retries it without end: no partition of that runner is answered again.
    The requests are sent by librdkafka, which has every codec built in.
    """
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "compression.type": codec,
            # Several requests per batch: a real compressed batch.
            "linger.ms": 50,
        }
    )
    marker = uuid.uuid4().hex[:8]
    wanted = {}
    for i, customer_id in enumerate(CUSTOMERS[:40]):
        cid = f"{codec}-{marker}-{i}"
        wanted[cid] = customer_id
        producer.produce(
            kafka_topics.request,
            json.dumps({"customer_id": customer_id}).encode(),
            customer_id.encode(),
            headers=[("correlation_id", cid.encode())],
        )
    assert producer.flush(30) == 0, "the broker did not take the requests"

    replies = asyncio.run(
        read_all(kafka_bootstrap, kafka_topics.reply, until=set(wanted), wait_s=60)
    )
    missing = set(wanted) - set(replies)
    assert not missing, (
        f"{len(missing)} of {len(wanted)} {codec} requests got no reply: "
        f"{kafka_server.logs()[-2000:]}"
    )
    for cid, customer_id in wanted.items():
        score = ChurnScore.model_validate(replies[cid][0][0])
        assert score.customer_id == customer_id


def test_metrics_count_the_kafka_path(
    kafka_server: BentoServer, kafka_bootstrap: str, kafka_topics: Topics
) -> None:
    asyncio.run(_roundtrip(kafka_bootstrap, kafka_topics, CUSTOMERS[:20]))
    text = httpx.get(f"{kafka_server.url}/metrics", timeout=10).text
    for name in (
        "predictflow_kafka_consumed_total",
        "predictflow_kafka_replied_total",
        "predictflow_kafka_batch_size_count",
        "predictflow_kafka_processing_seconds_count",
        'predictflow_predictions_total{outcome="scored",source="kafka"}',
        "predictflow_kafka_consumer_lag",
    ):
        assert name in text, name


def test_the_client_and_the_cli_get_replies(
    kafka_server: BentoServer,
    kafka_bootstrap: str,
    kafka_topics: Topics,
    workspace: Workspace,
    tmp_path: Path,
) -> None:
    settings = KafkaSettings(
        request_topic=kafka_topics.request, reply_topic=kafka_topics.reply
    )

    async def ask() -> tuple[object, object]:
        async with ChurnClient(kafka_bootstrap, settings=settings) as client:
            known = await client.request(ChurnRequest(customer_id="7590-VHVEG"))
            unknown = await client.request(ChurnRequest(customer_id="0000-NOBODY"))
            return known, unknown

    known, unknown = asyncio.run(ask())
    assert isinstance(known, ChurnScore) and known.customer_id == "7590-VHVEG"
    assert isinstance(unknown, ErrorReply) and unknown.error == "unknown_customer"

    env = {**workspace.env, **kafka_topics.env(kafka_bootstrap)}
    done = workspace.run(
        "publish", "--customer-id", "5575-GNVDE", "--wait", extra_env=env, timeout=120
    )
    assert ChurnScore.model_validate_json(done.stdout).customer_id == "5575-GNVDE"

    lines = tmp_path / "requests.jsonl"
    lines.write_text(
        "".join(json.dumps({"customer_id": c}) + "\n" for c in CUSTOMERS[:5])
    )
    done = workspace.run("publish", "--file", str(lines), extra_env=env, timeout=120)
    printed = [json.loads(x) for x in done.stdout.splitlines()]
    assert sorted(p["customer_id"] for p in printed) == sorted(CUSTOMERS[:5])
    assert all(p["correlation_id"] and "churn_probability" in p for p in printed)


# -- the standalone runner (python -m consumers) ----------------------------


class Consumers:
    """Starts standalone runners against one test's topics, one log per start."""

    def __init__(
        self, workspace: Workspace, bootstrap: str, topics: Topics, **extra: str
    ) -> None:
        self.env = {**workspace.env, **topics.env(bootstrap), **extra}
        self.dir = workspace.root / "consumers" / topics.group
        self.dir.mkdir(parents=True)
        self.processes: list[ConsumerProcess] = []

    def start(self, instance: str = "a") -> ConsumerProcess:
        env = {
            **self.env,
            # Names the transactional id: the tests that tell runners apart
            # need it.
            "PREDICTFLOW_KAFKA__INSTANCE_ID": instance,
        }
        log = self.dir / f"{instance}-{len(self.processes)}.log"
        process = ConsumerProcess(env, log)
        self.processes.append(process)
        return process.wait_assigned()

    def kill_all(self) -> None:
        for process in self.processes:
            # A fenced zombie stops by itself: its log is closed all the same.
            process.kill()


SpawnConsumers = Callable[..., Consumers]


@pytest.fixture
def consumers(workspace: Workspace) -> Iterator[SpawnConsumers]:
    """Makes `Consumers` for a test; whatever still runs is killed at teardown."""
    made: list[Consumers] = []

    def spawn(bootstrap: str, topics: Topics, **extra: str) -> Consumers:
        made.append(Consumers(workspace, bootstrap, topics, **extra))
        return made[-1]

    yield spawn
    for group in made:
        group.kill_all()


# The chaos tests' runners score polls of at most 100 records: the bound on
# what a fault may repeat (below) then means something at a test's size; no
# other part of the runner depends on the poll size.
CHAOS_MAX_BATCH = 100


def _mode_env(mode: str) -> dict[str, str]:
    return {
        "PREDICTFLOW_KAFKA__EXACTLY_ONCE": str(mode == "exactly_once").lower(),
        "PREDICTFLOW_KAFKA__MAX_BATCH": str(CHAOS_MAX_BATCH),
    }


def repeatable_per_fault() -> int:
    """Most requests whose reply one fault may repeat, in at-least-once mode.

    A reply repeats only when it was produced but its request's offset was not
    committed when the fault struck: the successor (or the rewound runner)
    starts again from the committed offset. The runner commits a poll once its
    replies are acknowledged, and lets at most `max_in_flight_batches` polls
    await their acks while it scores one more; a poll is at most `max_batch`
    records across all partitions (aiokafka's `getmany(max_records=...)` caps
    the poll, not each partition), hence no factor for partitions. Commits
    follow acks within a round trip while the broker answers; polls piling up
    acknowledged but uncommitted would be a stalled commit, itself a fault.
    """
    s = KafkaSettings(max_batch=CHAOS_MAX_BATCH)
    return s.max_batch * (s.max_in_flight_batches + 1)


@dataclass
class Fault:
    """A moment a chaos test struck: what had been published and answered by then."""

    what: str
    #: End offsets of the reply topic at that moment (`ReplyWatch.mark`).
    mark: dict[int, int]
    published: int
    #: The group's committed request offsets then (when the test read them).
    committed: dict[int, int] = field(default_factory=dict)

    def uncommitted(self, sent: Sent, watch: ReplyWatch) -> set[str]:
        """Ids answered by then whose request offset was not yet committed."""
        return {
            cid
            for cid in watch.answered_before(self.mark) & sent.records.keys()
            if sent.records[cid][2] >= self.committed.get(sent.records[cid][1], 0)
        }


@dataclass
class Chaos:
    """A chaos test's evidence: its faults, what it sent, every reply it read."""

    label: str
    sent: Sent
    watch: ReplyWatch
    faults: list[Fault]

    def __post_init__(self) -> None:
        self.tally = Tally.of(self.sent, self.watch.by_id())

    def answered_at(self, fault: Fault) -> int:
        """Ids answered when the fault struck (replies written before its mark)."""
        return len(self.watch.answered_before(fault.mark) & self.sent.records.keys())

    def repeats_after(self) -> Counter[str]:
        """After which fault each repeated reply was written."""
        after: Counter[str] = Counter()
        replies = self.watch.by_id()
        for cid in self.tally.duplicated:
            for reply in sorted(replies[cid], key=lambda r: r.offset)[1:]:
                struck = [
                    f.what
                    for f in self.faults
                    if f.mark[reply.partition] <= reply.offset
                ]
                where = f"after {struck[-1]}" if struck else "before any fault"
                after[where] += 1
        return after

    def figures(self) -> list[str]:
        """What to report: each fault's moment, then the accounting."""
        total = len(self.sent.records)
        lines = [
            f"[{self.label}] {f.what}: {self.answered_at(f):,} of {total:,} ids "
            f"answered ({self.answered_at(f) / total:.0%}), {f.published:,} published"
            for f in self.faults
        ]
        lines.append(f"[{self.label}] {self.tally}")
        if repeats := self.repeats_after():
            lines[-1] += "; repeats written: " + ", ".join(
                f"{n} {where}" for where, n in repeats.items()
            )
        return lines

    def check(
        self,
        request: pytest.FixtureRequest,
        *,
        may_repeat: bool,
        uncommitted: set[str] | None = None,
    ) -> None:
        """Report the figures, then assert the faults struck mid-stream and
        every id is accounted for.

        Each fault must strike after >= 25 % and before <= 75 % of the ids were
        answered, counted from the replies written before its mark: however
        late the test noticed, that is the figure at the fault. Every id is
        answered and no reply carries an unknown id. Unless `may_repeat`
        (at-least-once across a crash or rebalance), no id is answered twice;
        otherwise a reply repeats only as a fault's consequence: at most once
        per fault for any id, at most `repeatable_per_fault()` ids per fault,
        and, when the test knows them (`uncommitted`), only ids answered but
        not committed at a fault.
        """
        lines = self.figures()
        request.node.user_properties.extend(("figure", line) for line in lines)
        story = "\n".join(lines)
        total = len(self.sent.records)
        for fault in self.faults:
            assert total / 4 <= self.answered_at(fault) <= 3 * total / 4, story
        tally = self.tally
        assert not tally.unknown, f"replies to ids never sent\n{story}"
        assert not tally.missing, f"requests never answered\n{story}"
        if not may_repeat:
            assert not tally.duplicated, f"replies repeated\n{story}"
            return
        faults = len(self.faults)
        assert tally.most_replies() <= 1 + faults, f"a reply repeats in a loop\n{story}"
        assert len(tally.duplicated) <= faults * repeatable_per_fault(), story
        if uncommitted is not None:
            stray = tally.duplicated.keys() - uncommitted
            assert not stray, f"{len(stray)} repeated after their commit\n{story}"


@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
def test_sigkill_twice_mid_stream_loses_nothing(
    consumers: SpawnConsumers,
    kafka_bootstrap: str,
    mode: str,
    request: pytest.FixtureRequest,
) -> None:
    """A runner SIGKILLed twice mid-stream, restarted each time: no id is lost.

    At-least-once repeats only the replies produced but not committed at a
    kill; exactly-once under read_committed repeats none.
    """
    exactly_once = mode == "exactly_once"
    topics = Topics.fresh(f"kill-{mode}", kafka_bootstrap)
    group = consumers(kafka_bootstrap, topics, **_mode_env(mode))
    total, rate = 10_000, 1_000
    # Kill once this many are answered; publish no further than the limit
    # until the replacement runs, so the kill lands between 25 % and 75 %
    # however slow the machine.
    legs = [(3_000, 4_500), (5_500, 7_000)]

    async def scenario() -> tuple[Sent, ReplyWatch, list[Fault], float]:
        runner = group.start()
        faults: list[Fault] = []
        async with (
            ReplyWatch(
                kafka_bootstrap, topics.reply, read_committed=exactly_once
            ) as watch,
            Stream(kafka_bootstrap, topics.request, _ids(total), rate) as stream,
        ):
            started = time.monotonic()
            for i, (answered, limit) in enumerate(legs, 1):
                stream.allow(limit)
                await watch.wait_answered(answered)
                runner.kill()
                faults.append(
                    Fault(
                        f"SIGKILL {i}",
                        await watch.mark(),
                        stream.published,
                        await committed_offsets(
                            kafka_bootstrap, topics.group, topics.request
                        ),
                    )
                )
                runner = await asyncio.to_thread(group.start)
            stream.allow(total)
            sent = await stream.done()
            await watch.wait_for(set(sent.records), wait_s=240, settle=3)
            elapsed = time.monotonic() - started
        await asyncio.to_thread(runner.terminate)
        return sent, watch, faults, elapsed

    sent, watch, faults, elapsed = asyncio.run(scenario())
    chaos = Chaos(mode, sent, watch, faults)
    uncommitted = set().union(*(f.uncommitted(sent, watch) for f in faults))
    request.node.user_properties.append(
        (
            "figure",
            f"[{mode}] {total:,} requests at {rate:,}/s answered in {elapsed:.1f}s "
            f"with 2 SIGKILLs; {len(uncommitted)} answered but uncommitted at the "
            f"kills",
        )
    )
    chaos.check(request, may_repeat=not exactly_once, uncommitted=uncommitted)


def _join_and_leave(
    group: Consumers, bootstrap: str, topics: Topics, exactly_once: bool
) -> tuple[Sent, ReplyWatch, list[Fault], int]:
    """Runner b joins runner a while requests stream at 400/s, then leaves."""
    total, rate = 12_000, 400

    async def scenario() -> tuple[Sent, ReplyWatch, list[Fault], int]:
        a = group.start("a")
        faults: list[Fault] = []
        async with (
            ReplyWatch(bootstrap, topics.reply, read_committed=exactly_once) as watch,
            Stream(bootstrap, topics.request, _ids(total), rate) as stream,
        ):
            # Requests must flow through each rebalance, however long b takes
            # to start on a loaded machine: the stream waits at a limit before
            # each one and goes on by 13 % (3.9 s, more than a heartbeat
            # interval, within which a learns of it) once the broker says the
            # group is rebalancing. b starts once a quarter is answered; the
            # limits, 48 %, 61 % and 74 %, keep both faults within 25-75 %.
            stream.allow(total * 48 // 100)
            await watch.wait_answered(total // 4)
            joining = asyncio.ensure_future(asyncio.to_thread(group.start, "b"))
            # The join strikes when b asks to join (a is revoked from then
            # on), not when b reports its partitions, a rebalance later.
            await wait_rebalance(bootstrap, topics.group, unless=joining)
            faults.append(Fault("b joining", await watch.mark(), stream.published))
            stream.allow(total * 61 // 100)
            b = await joining  # 1 -> 2
            await asyncio.sleep(2)
            faults.append(Fault("b left", await watch.mark(), stream.published))
            stream.allow(total * 74 // 100)
            code = await asyncio.to_thread(b.terminate)  # 2 -> 1
            stream.allow(total)
            sent = await stream.done()
            await watch.wait_for(set(sent.records), wait_s=180, settle=3)
        await asyncio.to_thread(a.terminate)
        return sent, watch, faults, code

    return asyncio.run(scenario())


def test_consumers_joining_and_leaving_lose_nothing(
    consumers: SpawnConsumers, kafka_bootstrap: str, request: pytest.FixtureRequest
) -> None:
    """At-least-once across a join and a leave: every id answered, few repeated."""
    topics = Topics.fresh("rebalance", kafka_bootstrap)
    group = consumers(kafka_bootstrap, topics, **_mode_env("at_least_once"))
    sent, watch, faults, code = _join_and_leave(group, kafka_bootstrap, topics, False)
    assert code == 0
    chaos = Chaos("rebalance, at_least_once", sent, watch, faults)
    chaos.check(request, may_repeat=True)


def test_exactly_once_holds_across_a_rebalance(
    consumers: SpawnConsumers, kafka_bootstrap: str, request: pytest.FixtureRequest
) -> None:
    """Exactly-once: a runner joins and leaves mid-stream; read_committed sees
    every id answered exactly once.

    Holds only if a runner finishes (or aborts) its open transaction before it
    gives up partitions on revoke: otherwise the new owner reads the committed
    offsets without that transaction's, and answers its records again.
    """
    topics = Topics.fresh("rebalance-eos", kafka_bootstrap)
    group = consumers(kafka_bootstrap, topics, **_mode_env("exactly_once"))
    sent, watch, faults, code = _join_and_leave(group, kafka_bootstrap, topics, True)
    assert code == 0
    chaos = Chaos("rebalance, exactly_once", sent, watch, faults)
    chaos.check(request, may_repeat=False)


def _past_committed(ids: set[str], sent: Sent, committed: dict[int, int]) -> str:
    """Where `ids`' requests sit: per partition, how far past the committed offset."""
    spread: dict[int, list[int]] = {}
    for cid in ids:
        _, partition, offset = sent.records[cid]
        spread.setdefault(partition, []).append(offset - committed.get(partition, 0))
    return ", ".join(
        f"p{p}: {len(d)} at +{min(d)}..+{max(d)}" for p, d in sorted(spread.items())
    )


async def _stop_inside_a_transaction(
    runner: ConsumerProcess, watch: ReplyWatch, stream: Stream, ceiling: int
) -> dict[int, int]:
    """SIGSTOP the runner at a moment it has replies written in an open transaction.

    Returns the undecided records per reply partition. That window is a few
    milliseconds of each poll, so a stop that lands outside it is undone and
    tried again after a varying run. Only a runner with requests to answer
    opens transactions: the stream is let on about a second past what it has
    published at each try, up to `ceiling`, however slow the runner's start
    or the tries.
    """
    for i in range(300):
        runner.pause()
        # A commit already sent completes without the runner: let it land.
        await asyncio.sleep(0.05)
        if open_records := await watch.undecided():
            return open_records
        stream.allow(
            min(max(stream.limit, stream.published + int(stream.rate)), ceiling)
        )
        runner.resume()
        await asyncio.sleep(0.02 + (i * 0.037) % 0.3)
    raise AssertionError(
        f"the runner was never caught inside a transaction "
        f"({stream.published} of {ceiling} requests published)"
    )


@dataclass
class Zombie:
    """What a zombie test saw: the stop, and every id's replies afterwards."""

    sent: Sent
    watch: ReplyWatch
    #: Its mark is the last stable offsets at the stop: where the open
    #: transaction's replies begin on each partition.
    stop: Fault
    open_records: dict[int, int]
    stopped_for: float
    zombie_log: str

    def open_replies_seen(self) -> int:
        """Replies of the transaction open at the stop that read_committed sees."""
        return sum(
            1
            for r in self.watch.replies
            if 0
            <= r.offset - self.stop.mark[r.partition]
            < self.open_records.get(r.partition, 0)
        )

    def describe(self, tally: Tally) -> str:
        """The stop, and where the repeated requests sat."""
        repeated = set(tally.duplicated) & self.sent.records.keys()
        where = _past_committed(repeated, self.sent, self.stop.committed)
        return (
            f"stopped {self.stopped_for:.1f}s with {sum(self.open_records.values())} "
            f"replies in an open transaction, {self.open_replies_seen()} of them "
            f"committed in the end; {tally}; repeated requests, past the offsets "
            f"committed at the stop: {where or 'none'}"
        )


def _zombie(group: Consumers, bootstrap: str, topics: Topics, successor: str) -> Zombie:
    """Runner a (exactly-once) is SIGSTOPped inside a transaction, mid-stream,
    for longer than the group session; `successor` takes over; a is resumed."""
    total, rate = 8_000, 400

    async def scenario() -> Zombie:
        a = group.start("a")
        async with (
            ReplyWatch(bootstrap, topics.reply, read_committed=True) as watch,
            Stream(bootstrap, topics.request, _ids(total), rate) as stream,
        ):
            # The last quarter waits for a's wake-up: requests keep coming
            # to whichever partitions a takes back when it rejoins.
            stream.allow(total // 4)
            await watch.wait_answered(total // 5)
            open_records = await _stop_inside_a_transaction(
                a, watch, stream, ceiling=total - total // 4
            )
            stopped = time.monotonic()
            stop = Fault(
                "a stopped",
                await watch.mark(),
                stream.published,
                await committed_offsets(bootstrap, topics.group, topics.request),
            )
            # Joins once a's session (aiokafka's default 10 s: the runner
            # does not set it) has expired, and takes every partition.
            b = await asyncio.to_thread(group.start, successor)
            # b works a while; a sleeps past the session timeout in any case.
            await asyncio.sleep(max(2.0, stopped + 12 - time.monotonic()))
            a.resume()
            stopped_for = time.monotonic() - stopped
            stream.allow(total)
            sent = await stream.done()
            await watch.wait_for(set(sent.records), wait_s=30, settle=3)
        for runner in (a, b):
            if runner.proc.poll() is None:
                await asyncio.to_thread(runner.terminate)
        return Zombie(
            sent, watch, stop, open_records, stopped_for, a.log_path.read_text()
        )

    return asyncio.run(scenario())


def test_a_zombie_runner_repeats_only_what_it_had_not_committed(
    consumers: SpawnConsumers, kafka_bootstrap: str, request: pytest.FixtureRequest
) -> None:
    """What exactly-once guarantees against a zombie with another instance id.

    aiokafka has no KIP-447 fencing: a transaction's offsets are committed
    with the group id alone, not the member's generation, so the coordinator
    accepts them from a runner that has lost its partitions, and only a
    producer with the same transactional id can fence it. A runner frozen
    (GC pause, SIGSTOP, a stalled VM) past the session timeout inside a
    transaction, whose partitions went to a runner with another id, may
    commit that transaction when it wakes.

    Guarantee, under read_committed: every id is answered; a reply repeats
    only for a request the zombie had not committed when it froze, at most
    2 x `max_batch` of them: the poll of its open transaction, and at most one
    more taken before its first heartbeat after waking reports it expelled
    (aiokafka then stops returning the old partitions' records); no request is
    answered more than twice.
    """
    topics = Topics.fresh("zombie", kafka_bootstrap)
    group = consumers(kafka_bootstrap, topics, **_mode_env("exactly_once"))
    seen = _zombie(group, kafka_bootstrap, topics, successor="b")
    tally = Tally.of(seen.sent, seen.watch.by_id())
    story = seen.describe(tally)
    request.node.user_properties.append(("figure", f"[zombie, another id] {story}"))
    uncommitted = {
        cid
        for cid, (_, partition, offset) in seen.sent.records.items()
        if offset >= seen.stop.committed.get(partition, 0)
    }
    assert not tally.unknown, story
    assert not tally.missing, story
    assert not tally.duplicated.keys() - uncommitted, story
    assert len(tally.duplicated) <= 2 * CHAOS_MAX_BATCH, story
    assert tally.most_replies() <= 2, story


def test_a_runner_restarted_with_the_same_id_fences_its_zombie(
    consumers: SpawnConsumers, kafka_bootstrap: str, request: pytest.FixtureRequest
) -> None:
    """A successor with the zombie's instance id fences it: no reply repeats.

    The successor's producer registers the same transactional id: the broker
    bumps its epoch and aborts the zombie's open transaction, and refuses the
    zombie when it wakes (ProducerFenced). Under read_committed every id is
    answered exactly once, including on partitions the zombie takes back
    when it rejoins the group: a fenced runner must not keep them.
    """
    topics = Topics.fresh("fenced", kafka_bootstrap)
    group = consumers(kafka_bootstrap, topics, **_mode_env("exactly_once"))
    seen = _zombie(group, kafka_bootstrap, topics, successor="a")
    tally = Tally.of(seen.sent, seen.watch.by_id())
    story = seen.describe(tally)
    request.node.user_properties.append(("figure", f"[zombie, same id] {story}"))
    # Each kind of error the zombie logged, with how often.
    zombie_errors = Counter(
        line.split(" error=", 1)[-1][:200]
        for line in seen.zombie_log.splitlines()
        if "event=kafka_error" in line or "event=kafka_fenced" in line
    )
    errors = "\n".join(f"{n} x {e}" for e, n in zombie_errors.most_common(5))
    assert any("ProducerFenced" in e for e in zombie_errors), seen.zombie_log[-3000:]
    # Fenced, the zombie stops (it must not fence the live runner back).
    assert "event=kafka_fenced" in seen.zombie_log, seen.zombie_log[-3000:]
    assert seen.open_replies_seen() == 0, story
    assert not tally.unknown, story
    assert not tally.missing, f"{story}\nthe zombie's errors:\n{errors}"
    assert not tally.duplicated, story


def test_sigterm_exits_promptly_with_every_reply_committed(
    consumers: SpawnConsumers, kafka_bootstrap: str, request: pytest.FixtureRequest
) -> None:
    """SIGTERM mid-stream: prompt exit, replied == committed, a clean handover."""
    topics = Topics.fresh("sigterm", kafka_bootstrap)
    group = consumers(kafka_bootstrap, topics, **_mode_env("at_least_once"))
    total, rate = 6_000, 1_000

    async def scenario() -> tuple[Sent, ReplyWatch, Fault, float, int, set[str]]:
        runner = group.start()
        async with (
            ReplyWatch(kafka_bootstrap, topics.reply, read_committed=False) as watch,
            Stream(kafka_bootstrap, topics.request, _ids(total), rate) as stream,
        ):
            stream.allow(total * 3 // 4)
            await watch.wait_answered(total // 3)
            fault = Fault("SIGTERM", await watch.mark(), stream.published)
            asked = time.monotonic()
            code = await asyncio.to_thread(runner.terminate, 60)
            took = time.monotonic() - asked
            fault.committed = await committed_offsets(
                kafka_bootstrap, topics.group, topics.request
            )
            # Every request the runner could have read is acknowledged by now.
            await stream.flush()
            await watch.catch_up()
            replied_by_first = set(watch.by_id())
            successor = await asyncio.to_thread(group.start)
            stream.allow(total)
            sent = await stream.done()
            await watch.wait_for(set(sent.records), wait_s=120, settle=3)
        await asyncio.to_thread(successor.terminate)
        return sent, watch, fault, took, code, replied_by_first

    sent, watch, fault, took, code, replied = asyncio.run(scenario())
    assert code == 0
    assert took < 30, f"SIGTERM took {took:.1f}s"
    request.node.user_properties.append(
        ("figure", f"[sigterm] the runner stopped {took:.1f}s after SIGTERM")
    )
    covered = {
        cid
        for cid, (_, partition, offset) in sent.records.items()
        if offset < fault.committed.get(partition, -1)
    }
    assert covered, "nothing was committed"
    # Every committed request has its reply, and every reply sent is committed.
    assert covered <= replied
    assert replied <= covered
    # So the successor starts right after the last reply: none repeats.
    Chaos("sigterm", sent, watch, [fault]).check(request, may_repeat=False)


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker these tests may stop and start."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-own")).up()
    yield broker
    broker.down()


def test_the_runner_recovers_from_a_broker_restart(
    consumers: SpawnConsumers, own_broker: KafkaBroker, request: pytest.FixtureRequest
) -> None:
    """The broker restarts mid-stream: every id answered, repeats bounded."""
    bootstrap = own_broker.bootstrap
    topics = Topics.fresh("restart", bootstrap)
    group = consumers(bootstrap, topics, **_mode_env("at_least_once"))
    total, rate = 8_000, 800

    async def scenario() -> tuple[Sent, ReplyWatch, Fault, float]:
        runner = group.start()
        async with (
            ReplyWatch(bootstrap, topics.reply, read_committed=False) as watch,
            Stream(bootstrap, topics.request, _ids(total), rate) as stream,
        ):
            # The stream goes on while the broker is down (its producer
            # waits), up to 60 % until the broker is back.
            stream.allow(total * 6 // 10)
            await watch.wait_answered(total * 3 // 10)
            # Read before the fault: the runner commits more until the broker
            # stops, so this is a lower bound of what was committed then.
            committed = await committed_offsets(bootstrap, topics.group, topics.request)
            fault = Fault(
                "broker down", await watch.mark(), stream.published, committed
            )
            started = time.monotonic()
            await asyncio.to_thread(own_broker.down)
            await asyncio.sleep(3)
            await asyncio.to_thread(own_broker.up)
            stream.allow(total)
            sent = await stream.done()
            await watch.wait_for(set(sent.records), wait_s=240, settle=3)
            recovered = time.monotonic() - started
        assert await asyncio.to_thread(runner.terminate) == 0
        return sent, watch, fault, recovered

    sent, watch, fault, recovered = asyncio.run(scenario())
    request.node.user_properties.append(
        (
            "figure",
            f"[broker restart] every id answered {recovered:.1f}s after the broker "
            f"went down",
        )
    )
    # Only requests not committed when the broker went down may repeat.
    unfinished = {
        cid
        for cid, (_, partition, offset) in sent.records.items()
        if offset >= fault.committed.get(partition, 0)
    }
    chaos = Chaos("broker restart", sent, watch, [fault])
    chaos.check(request, may_repeat=True, uncommitted=unfinished)


def test_sigterm_stops_the_runner_while_the_broker_is_down(
    consumers: SpawnConsumers, own_broker: KafkaBroker
) -> None:
    bootstrap = own_broker.bootstrap
    topics = Topics.fresh("down", bootstrap)
    consumer = consumers(bootstrap, topics).start()
    own_broker.down()
    try:
        time.sleep(2)
        asked = time.monotonic()
        consumer.terminate(timeout=90)
        assert time.monotonic() - asked < 60, "SIGTERM did not stop the runner"
    finally:
        own_broker.up()
