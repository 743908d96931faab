"""The canary's Kafka share follows its weight, on a real broker.

Stable and canary members (tests/canary_member.py, the runner's consumer
settings) join one group on a topic with the partitions k8s/ gives
churn-requests, in the pod counts Argo Rollouts sets at each step of a
10-pod Rollout (canary scaled up first, then stable down, as
`dynamicStableScale` does). At every step the canary's assigned share of the
partitions is its weight. Requests flow all along: each membership change is
a rebalance (aiokafka has no cooperative protocol), so the test measures the
reply latency while it lasts (P99, the longest reply, records delayed) and
checks that none is lost; the figures are printed, per group configuration.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devtools.processes import ROOT
from predictflow.canary.plan import STEPS, rollout_replicas
from predictflow.kafka_settings import KafkaSettings

PARTITIONS = 20  # k8s/base/configmap.yaml PREDICTFLOW_KAFKA__REQUEST_PARTITIONS
PODS = 10  # the Rollout's HPA minimum (k8s/overlays/argo-rollouts)
RATE = 200  # requests per second, all along
DELAYED_S = 0.25  # a reply slower than this was held up by the rebalance
SETTLE_TIMEOUT_S = 60

# Group configurations compared: aiokafka's defaults (session 10 s,
# heartbeat 3 s); the runner's (KafkaSettings: heartbeats every 500 ms, so
# members learn of a rebalance sooner); and static membership
# (group_instance_id): a static member does not leave the group when it
# stops, so the partitions of each stable pod a step removes wait for its
# session to time out.
_RUNNER = KafkaSettings()
CONFIGS = {
    "aiokafka-defaults": [],
    "runner": [
        "--heartbeat-ms",
        str(_RUNNER.heartbeat_interval_ms),
        "--session-ms",
        str(_RUNNER.session_timeout_ms),
    ],
    "static-membership": ["--static"],
}


@dataclass
class Member:
    name: str
    track: str
    proc: subprocess.Popen[bytes]
    log: Path
    files: tuple[IO[str], ...] = ()

    def end(self, timeout: float = 60) -> None:
        """SIGTERM (it leaves the group), wait, close its files."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=timeout)
        for f in self.files:
            f.close()

    def assignment(self) -> list[int] | None:
        """The partitions it holds now (None: none since its last revoke)."""
        held = None
        for line in self.log.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "assigned":
                held = event["partitions"]
            else:
                held = None
        return held


@dataclass
class Group:
    bootstrap: str
    topic: str
    reply: str
    group: str
    workdir: Path
    options: list[str]
    members: dict[str, Member] = field(default_factory=dict)

    def start(self, track: str) -> None:
        # Never reused (a stopped member leaves the dict): a reused name would
        # overwrite a live member, leak its process and never raise the count.
        name = f"{track}-{uuid.uuid4().hex[:8]}"
        log = self.workdir / f"{name}.jsonl"
        out = log.open("w")
        err = (self.workdir / f"{name}.err").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.canary_member", "--bootstrap",
             self.bootstrap, "--topic", self.topic, "--reply", self.reply,
             "--group", self.group, "--name", name, *self.options],
            cwd=ROOT, stdout=out, stderr=err,
        )  # fmt: skip
        self.members[name] = Member(name, track, proc, log, (out, err))

    def stop(self, track: str) -> None:
        member = next(m for m in self.live() if m.track == track)
        member.end()
        del self.members[member.name]

    def live(self) -> list[Member]:
        return list(self.members.values())

    def count(self, track: str) -> int:
        return sum(m.track == track for m in self.live())

    async def settled(self) -> dict[str, list[int]]:
        """Wait until every member holds partitions and they cover the topic
        once; the partitions each track holds."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            held = {m.name: m.assignment() for m in self.live()}
            if all(p is not None for p in held.values()):
                flat = [p for parts in held.values() for p in parts or []]
                if sorted(flat) == list(range(PARTITIONS)):
                    by_track: dict[str, list[int]] = {"stable": [], "canary": []}
                    for m in self.live():
                        by_track[m.track] += held[m.name] or []
                    return by_track
            await asyncio.sleep(0.05)
        raise TimeoutError(
            f"group not settled: { {m.name: m.assignment() for m in self.live()} }"
        )

    def close(self) -> None:
        for m in self.live():
            if m.proc.poll() is None:
                m.proc.terminate()
        for m in self.live():
            m.end()


class Traffic:
    """Requests at a steady rate; the reply latency of each."""

    def __init__(self, bootstrap: str, topic: str, reply: str) -> None:
        self.bootstrap, self.topic, self.reply = bootstrap, topic, reply
        self.sent: dict[str, float] = {}
        self.latency: dict[str, tuple[float, float]] = {}  # id -> (sent, seconds)
        self._stop = asyncio.Event()

    async def produce(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            i = 0
            start = time.monotonic()
            while not self._stop.is_set():
                cid = uuid.uuid4().hex
                self.sent[cid] = time.time()
                await producer.send(
                    self.topic, key=str(i % 97).encode(), value=cid.encode()
                )
                i += 1
                await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))
        finally:
            await producer.stop()

    async def collect(self, ready: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            self.reply, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        ready.set()
        try:
            while True:
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    now = time.time()
                    for r in records:
                        cid = r.value.decode()
                        if cid not in self.latency and cid in self.sent:
                            self.latency[cid] = (self.sent[cid], now - self.sent[cid])
        finally:
            await consumer.stop()

    def stop(self) -> None:
        self._stop.set()

    def window(self, start: float, end: float) -> list[float]:
        return [lat for sent, lat in self.latency.values() if start <= sent <= end]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:8]
    names = (f"canary-req-{tag}", f"canary-rep-{tag}")

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(names[0], PARTITIONS, 1), NewTopic(names[1], 1, 1)]
            )
        finally:
            await admin.close()

    asyncio.run(create())
    yield names


@pytest.mark.parametrize("config", sorted(CONFIGS))
async def test_the_canary_share_of_partitions_is_its_weight(
    config: str,
    kafka_bootstrap: str,
    topics: tuple[str, str],
    tmp_path: Path,
    record_property: pytest.RecordProperty,
) -> None:
    group = Group(kafka_bootstrap, *topics, f"canary-grp-{uuid.uuid4().hex[:8]}",
                  tmp_path, CONFIGS[config])  # fmt: skip
    traffic = Traffic(kafka_bootstrap, *topics)
    ready = asyncio.Event()
    collector = asyncio.create_task(traffic.collect(ready))
    producer: asyncio.Task[None] | None = None
    figures: dict[str, dict[str, float]] = {}
    try:
        for _ in range(PODS):
            group.start("stable")
        await group.settled()
        await ready.wait()
        producer = asyncio.create_task(traffic.produce())
        await asyncio.sleep(3)
        baseline = traffic.window(time.time() - 3, time.time())
        figures["steady"] = {"p99_ms": p99(baseline) * 1000}
        for weight in STEPS[:-1]:
            stable, canary = rollout_replicas(PODS, weight)
            began = time.time()
            while group.count("canary") < canary:
                group.start("canary")
            await group.settled()
            while group.count("stable") > stable:
                group.stop("stable")
            held = await group.settled()
            ended = time.time()
            assert len(held["canary"]) == PARTITIONS * weight // 100, (weight, held)
            await asyncio.sleep(2)
            during = traffic.window(began, ended)
            figures[f"{weight}%"] = {
                "rebalance_s": round(ended - began, 2),
                "p99_ms": round(p99(during) * 1000),
                "max_ms": round(max(during) * 1000),
                "delayed": sum(lat > DELAYED_S for lat in during),
                "requests": len(during),
            }
        traffic.stop()
        if producer is not None:
            await producer
        deadline = time.monotonic() + 30
        while len(traffic.latency) < len(traffic.sent):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        lost = len(traffic.sent) - len(traffic.latency)
        figures["total"] = {"sent": len(traffic.sent), "lost": lost}
        record_property("figure", f"canary rebalance ({config}): {json.dumps(figures)}")
        assert lost == 0, figures
    finally:
        traffic.stop()
        collector.cancel()
        tasks = [collector] + ([producer] if producer is not None else [])
        await asyncio.gather(*tasks, return_exceptions=True)
        group.close()
