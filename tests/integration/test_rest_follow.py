"""`bentoml serve` under load follows its alias: no request fails across the swap."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from devtools.processes import BentoServer, Workspace, wait_for
from tests.registry_support import set_alias, stage_a_swap

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*Any type hint is inferred:UserWarning"
)
#: The server's own alias, so the session's champion (other tests) stays put.
ALIAS = "rest-follow"
REFRESH_SECONDS = 1.0
RATE = 150  # requests per second, a fifth of them batches of 5


async def _load(url: str, seconds: float, moved: asyncio.Event) -> list[tuple]:
    """Open-loop requests at RATE; (sent at, after the move?, status, versions,
    answered at)."""
    results: list[tuple] = []
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=15, limits=limits) as client:

        async def one(i: int) -> None:
            sent = time.monotonic()
            after = moved.is_set()
            if i % 5 == 0:
                body = {"requests": [{"customer_id": "7590-VHVEG"}] * 5}
                r = await client.post("/predict_batch", json=body)
                versions = (
                    [x["model_version"] for x in r.json()["results"]]
                    if r.status_code == 200
                    else []
                )
            else:
                r = await client.post("/predict", json={"customer_id": "5575-GNVDE"})
                versions = [r.json()["model_version"]] if r.status_code == 200 else []
            results.append((sent, after, r.status_code, versions, time.monotonic()))

        tasks = []
        start = time.monotonic()
        for i in range(int(seconds * RATE)):
            if (pause := start + i / RATE - time.monotonic()) > 0:
                await asyncio.sleep(pause)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return results


def test_a_promotion_reaches_a_loaded_server_without_a_failed_request(
    workspace: Workspace, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    settings, old_version, new = stage_a_swap(
        workspace.env["PREDICTFLOW_DATA_DIR"], ALIAS, seed=9
    )
    old_tag, new_tag = (f"churn-predictor:{v}" for v in (old_version, new))
    server = BentoServer(
        workspace,
        "follow",
        {
            "PREDICTFLOW_MODEL__ALIAS": ALIAS,
            "PREDICTFLOW_MODEL__REFRESH_SECONDS": str(REFRESH_SECONDS),
        },
    ).wait()
    try:
        # The worker's first look at the registry (it imports MLflow then).
        wait_for(lambda: "event=following" in server.logs(), 120, "the follower")

        async def scenario() -> tuple[list[tuple], float, float]:
            moved = asyncio.Event()
            load = asyncio.create_task(_load(server.url, 25, moved))
            await asyncio.sleep(8)
            asked = time.monotonic()
            await asyncio.to_thread(set_alias, settings, ALIAS, new)
            moved.set()
            at = time.monotonic()
            return await load, asked, at

        results, asked_at, moved_at = asyncio.run(scenario())
        logs = server.logs()
    finally:
        server.stop()
    failed = [r for r in results if r[2] != 200]
    assert not failed, f"{len(failed)} of {len(results)} failed: {failed[:3]}"
    for _, _, _, versions, _ in results:
        # One batch, one model: a swap never splits a batch.
        assert len(set(versions)) == 1 and versions[0] in (old_tag, new_tag)
    before = [r for r in results if not r[1]]
    assert before and all(r[3][0] == old_tag for r in before[:20])
    deadline = moved_at + REFRESH_SECONDS + 5
    late = [r for r in results if r[0] > deadline]
    assert late, "the load ended before the swap could be seen"
    stale = [r for r in late if r[3][0] != new_tag]
    assert not stale, f"{len(stale)} answers from {old_tag} after the deadline"
    assert "event=model_swapped" in logs
    first_new = min(r[4] for r in results if r[3] and r[3][0] == new_tag)
    last_old = max(r[4] for r in results if r[3] and r[3][0] == old_tag)
    record_property(
        "figure",
        f"[rest follow] alias moved at {RATE} req/s (refresh {REFRESH_SECONDS:.0f} s,"
        f" the registry call took {moved_at - asked_at:.2f} s): first answer from"
        f" the new version {first_new - asked_at:.2f} s after the call began,"
        f" last from the old {last_old - asked_at:.2f} s after;"
        f" {len(results)} requests, 0 failed",
    )
