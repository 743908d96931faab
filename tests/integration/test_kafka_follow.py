"""The standalone Kafka runner follows its alias mid-stream: none lost, none twice."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pytest

from devtools.processes import ConsumerProcess, Workspace, wait_for
from devtools.topics import Topics
from predictflow.data import load_telco
from tests.kafka_support import publish, read_all
from tests.registry_support import set_alias, stage_a_swap

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*Any type hint is inferred:UserWarning"
)
CUSTOMERS = load_telco()["customer_id"].tolist()
#: The runner's own alias, so the session's champion (other tests) stays put.
ALIAS = "kafka-follow"


def test_the_runner_swaps_models_mid_stream_losing_and_doubling_nothing(
    workspace: Workspace, kafka_bootstrap: str, tmp_path: Path
) -> None:
    # Registered before the stream: mid-stream only the alias moves.
    settings, old_version, new = stage_a_swap(
        workspace.env["PREDICTFLOW_DATA_DIR"], ALIAS, seed=5
    )
    topics = Topics.fresh("follow", kafka_bootstrap)
    env = {
        **workspace.env,
        **topics.env(kafka_bootstrap),
        "PREDICTFLOW_KAFKA__INSTANCE_ID": topics.group,
        "PREDICTFLOW_MODEL__ALIAS": ALIAS,
        "PREDICTFLOW_MODEL__REFRESH_SECONDS": "1",
    }
    runner = ConsumerProcess(env, tmp_path / "runner.log")
    try:
        runner.wait_assigned()
        # The runner's first look at the registry (it imports MLflow then).
        wait_for(lambda: "event=following" in runner.logs(), 120, "the follower")

        async def stream_and_promote() -> object:
            sending = asyncio.create_task(
                publish(kafka_bootstrap, topics.request, CUSTOMERS[:6000], rate=200)
            )
            await asyncio.sleep(10)
            await asyncio.to_thread(set_alias, settings, ALIAS, new)
            return await sending

        sent = asyncio.run(stream_and_promote())
        ids = set(sent.records)  # type: ignore[attr-defined]
        replies = asyncio.run(
            read_all(kafka_bootstrap, topics.reply, until=ids, wait_s=120, settle=2.0)
        )
        logs = runner.logs()
    finally:
        runner.terminate()
    assert ids <= set(replies), f"{len(ids - set(replies))} requests lost"
    assert not [c for c in ids if len(replies[c]) > 1], "a request scored twice"
    old, new_tag = f"churn-predictor:{old_version}", f"churn-predictor:{new}"
    by_partition: dict[int, list[str]] = defaultdict(list)
    for cid in sorted(ids, key=lambda c: sent.records[c][2]):  # type: ignore[attr-defined]
        body, headers = replies[cid][0]
        version = headers["model_version"].decode()
        assert version == body["model_version"] in (old, new_tag)
        by_partition[sent.records[cid][1]].append(version)  # type: ignore[attr-defined]
    seen = {v for versions in by_partition.values() for v in versions}
    assert seen == {old, new_tag}, f"the swap did not happen mid-stream: {seen}"
    for partition, versions in by_partition.items():
        # In request order, once the new version answers, the old never does.
        first_new = versions.index(new_tag) if new_tag in versions else len(versions)
        assert old not in versions[first_new:], f"partition {partition} went back"
    assert "event=model_swapped" in logs
