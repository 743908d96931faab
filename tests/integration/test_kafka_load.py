"""The bench's live Kafka client (tools/kafka-load) against a real broker.

What `bench.kafka_bench.account` counts comes from this client: these runs
check that what it writes accounts for every request, against the bench's
echo consumers (every request answered) and against nobody (every request
lost).
"""

from __future__ import annotations

import concurrent.futures
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench import kafka_bench
from devtools.gobuild import go_build
from devtools.processes import ConsumerProcess, wait_for
from devtools.topics import Topics
from predictflow.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kafka_load() -> str:
    """tools/kafka-load from the module cache (`make test` fills it)."""
    out = Path(tempfile.mkdtemp(prefix="kafka-load-")) / "kafka-load"
    try:
        return str(go_build(PROJECT_ROOT / "tools" / "kafka-load", out, offline=True))
    except RuntimeError as exc:
        pytest.fail(f"{exc}\n(make bench-tools)")


@pytest.fixture
def ids(tmp_path: Path) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("7590-VHVEG\n5575-GNVDE\n3668-QPYBK\n")
    return path


def _start_echo(bootstrap: str, topics: Topics, log: Path) -> ConsumerProcess:
    """The bench's echo consumer (the floor's), on `topics`."""
    return ConsumerProcess(
        dict(os.environ),
        log,
        command=kafka_bench.echo_command(
            bootstrap, topics.request, topics.reply, topics.group
        ),
    )


def _owns_every_partition(consumer: ConsumerProcess) -> bool:
    return kafka_bench.assignment_complete([consumer.logs()], kafka_bench.PARTITIONS)


Load = Callable[..., dict[str, Any]]


@pytest.fixture
def load(kafka_load: str, kafka_bootstrap: str, ids: Path, tmp_path: Path) -> Load:
    """`kafka_bench.live` on the given topics: `load(topics, rate=..., ...)`."""

    def run(topics: Topics, **how: Any) -> dict[str, Any]:
        return kafka_bench.live(
            kafka_load,
            kafka_bootstrap,
            topics.request,
            topics.reply,
            ids,
            out=tmp_path / "live",
            **how,
        )

    return run


@pytest.fixture
def echo(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Topics]:
    """The bench's echo consumer on fresh topics, owning every partition."""
    topics = Topics.fresh("load", kafka_bootstrap)
    consumer = _start_echo(kafka_bootstrap, topics, tmp_path / "echo.log")
    try:
        wait_for(lambda: _owns_every_partition(consumer), 120, "echo consumer")
        yield topics
    finally:
        consumer.terminate()


def test_every_request_answered_once_is_counted_once(load: Load, echo: Topics) -> None:
    result = load(echo, rate=500, duration_s=2, drain_s=30, linger_ms=5)
    assert result["sent"] == 1000
    assert (result["replied"], result["missing"], result["duplicates"]) == (1000, 0, 0)
    assert result["error_replies"] == 0 and result["failed_sends"] == 0
    assert result["latency_ms"]["p50"] > 0
    assert result["client"].startswith("franz-go")


def test_requests_nobody_answers_are_counted_lost(
    load: Load, kafka_bootstrap: str
) -> None:
    topics = Topics.fresh("unanswered", kafka_bootstrap)
    result = load(topics, rate=200, duration_s=1, drain_s=1)
    assert result["sent"] == 200 and result["failed_sends"] == 0
    assert (result["replied"], result["missing"]) == (0, 200)
    assert result["latency_ms"] is None


@pytest.mark.parametrize("missing", ["request", "reply"])
def test_a_run_on_a_missing_topic_fails(
    load: Load, kafka_bootstrap: str, missing: str
) -> None:
    # Not a run that counts every request lost: the section shows as not met.
    topics = Topics.fresh("missing", kafka_bootstrap)
    if missing == "request":
        topics = replace(topics, request="no-such-request-topic")
    else:
        topics = replace(topics, reply="no-such-reply-topic")
    with pytest.raises(RuntimeError, match=f"kafka-load exited 1: .*{missing} topic"):
        load(topics, rate=100, duration_s=1)


def test_the_floor_answers_requests_sent_before_it_joined(
    load: Load, kafka_bootstrap: str, tmp_path: Path
) -> None:
    # The echo consumer starts after the first sends: it must read its fresh
    # topic from the start, or those requests would count as lost.
    topics = Topics.fresh("late-echo", kafka_bootstrap)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(load, topics, rate=200, duration_s=3, drain_s=60)
        time.sleep(1.5)
        consumer = _start_echo(kafka_bootstrap, topics, tmp_path / "echo.log")
        try:
            result = running.result(timeout=180)
        finally:
            consumer.terminate()
    assert (result["sent"], result["replied"], result["missing"]) == (600, 600, 0)
