"""MicroBatcher: concurrent requests share one Scorer call, each gets its result."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence

import pytest

from predictflow.batching import MicroBatcher
from predictflow.contract import ChurnRequest, ChurnScore, ErrorReply
from predictflow.errors import FeatureStoreUnavailable, Overloaded
from predictflow.model import ChurnModel
from predictflow.scoring import Scorer
from tests.unit.test_encoding import ROW
from tests.unit.test_scoring import FakeFeatures


@pytest.fixture
def source() -> FakeFeatures:
    return FakeFeatures({"A": ROW, "B": {**ROW, "contract": "Two year", "tenure": 60}})


async def test_concurrent_requests_share_one_feature_read(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    scorer = Scorer(source, small_model)
    batcher = MicroBatcher(scorer, source="test")
    ids = ["A", "B", "NOPE", "A"]
    results = await asyncio.gather(
        *(batcher.score(ChurnRequest(customer_id=c)) for c in ids)
    )
    assert source.calls == [["A", "B", "NOPE"]]
    assert [r.customer_id for r in results] == ids
    assert isinstance(results[2], ErrorReply)
    assert results[2].error == "unknown_customer"
    # Each result is the one the request would get alone.
    alone = scorer.score([ChurnRequest(customer_id="B")], source="test")
    assert results[1] == alone[0]
    assert isinstance(results[0], ChurnScore)


async def test_a_lone_request_is_scored_on_the_next_turn(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    batcher = MicroBatcher(Scorer(source, small_model), source="test")
    first = await batcher.score(ChurnRequest(customer_id="A"))
    second = await batcher.score(ChurnRequest(customer_id="B"))
    assert source.calls == [["A"], ["B"]]
    assert first != second


async def test_batches_are_capped(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    batcher = MicroBatcher(Scorer(source, small_model), source="test", max_size=2)
    results = await asyncio.gather(
        *(batcher.score(ChurnRequest(customer_id=c)) for c in "ABABA")
    )
    assert [len(call) for call in source.calls] == [2, 2, 1]
    assert [r.customer_id for r in results] == list("ABABA")


async def test_a_store_failure_reaches_every_waiter_and_the_next_batch_works(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    batcher = MicroBatcher(Scorer(source, small_model), source="test")
    source.fail = True
    outcomes = await asyncio.gather(
        *(batcher.score(ChurnRequest(customer_id=c)) for c in "AB"),
        return_exceptions=True,
    )
    assert all(isinstance(o, FeatureStoreUnavailable) for o in outcomes)
    source.fail = False
    assert isinstance(await batcher.score(ChurnRequest(customer_id="A")), ChurnScore)


async def test_a_cancelled_waiter_does_not_break_its_batch(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    batcher = MicroBatcher(Scorer(source, small_model), source="test")
    gone = asyncio.ensure_future(batcher.score(ChurnRequest(customer_id="A")))
    kept = asyncio.ensure_future(batcher.score(ChurnRequest(customer_id="B")))
    await asyncio.sleep(0)  # both parked, flush not yet run
    gone.cancel()
    result = await kept
    assert isinstance(result, ChurnScore)
    assert result.customer_id == "B"
    assert gone.cancelled()


def test_max_size_must_be_positive(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    with pytest.raises(ValueError, match="max_size"):
        MicroBatcher(Scorer(source, small_model), source="test", max_size=0)


class StalledFeatures(FakeFeatures):
    """A feature source whose reads hang until released (bounded by `hang`)."""

    def __init__(self, rows: dict[str, Mapping[str, object]], hang: float) -> None:
        super().__init__(rows)
        self.hang = hang
        self.released = threading.Event()
        self.entered = threading.Event()
        self.returned = threading.Event()

    def get(self, customer_ids: Sequence[str]) -> list[Mapping[str, object] | None]:
        self.entered.set()
        self.released.wait(self.hang)
        self.returned.set()
        return super().get(customer_ids)


async def test_the_event_loop_runs_while_a_batch_is_scored(
    small_model: ChurnModel,
) -> None:
    source = StalledFeatures({"A": ROW}, hang=2.0)
    batcher = MicroBatcher(Scorer(source, small_model), source="test")
    scored = asyncio.ensure_future(batcher.score(ChurnRequest(customer_id="A")))
    # Bounded: a read on the loop itself releases after 2 s.
    await asyncio.to_thread(source.entered.wait, 2.0)
    ticks_during_read = 0
    for _ in range(20):
        await asyncio.sleep(0.001)
        ticks_during_read += not source.returned.is_set()
    source.released.set()
    assert isinstance(await scored, ChurnScore)
    assert ticks_during_read == 20
    batcher.close()


async def test_a_stalled_store_answers_503_at_the_deadline(
    small_model: ChurnModel,
) -> None:
    source = StalledFeatures({"A": ROW}, hang=5.0)
    batcher = MicroBatcher(Scorer(source, small_model), source="test", timeout=0.2)
    outcomes = await asyncio.gather(
        *(batcher.score(ChurnRequest(customer_id="A")) for _ in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(o, FeatureStoreUnavailable) for o in outcomes), outcomes
    reply = outcomes[0].to_reply()  # type: ignore[union-attr]
    assert reply.retryable and reply.error == "feature_store_unavailable"
    # While the read is still stuck past the deadline, a new caller is told at once.
    await asyncio.sleep(0.05)
    with pytest.raises(FeatureStoreUnavailable):
        await asyncio.wait_for(batcher.score(ChurnRequest(customer_id="A")), 0.1)
    source.released.set()
    # Back: the stuck batch finished, the next one is scored (and the callers
    # that gave up were not scored again).
    for _ in range(100):
        if batcher._busy_since is None:
            break
        await asyncio.sleep(0.02)
    assert isinstance(await batcher.score(ChurnRequest(customer_id="A")), ChurnScore)
    assert source.calls == [["A"], ["A"]]
    batcher.close()


async def test_a_full_queue_is_refused_at_once(small_model: ChurnModel) -> None:
    source = StalledFeatures({"A": ROW}, hang=5.0)
    batcher = MicroBatcher(
        Scorer(source, small_model), source="test", timeout=2, max_queue=3
    )
    first = asyncio.ensure_future(batcher.score(ChurnRequest(customer_id="A")))
    await asyncio.to_thread(source.entered.wait, 2.0)
    parked = [
        asyncio.ensure_future(batcher.score(ChurnRequest(customer_id="A")))
        for _ in range(3)
    ]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as refused:
        await batcher.score(ChurnRequest(customer_id="A"))
    assert refused.value.to_reply().retryable
    source.released.set()
    for outcome in await asyncio.gather(first, *parked):
        assert isinstance(outcome, ChurnScore)
    batcher.close()


async def test_a_callers_batch_keeps_its_order_and_shares_the_queue(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    batcher = MicroBatcher(Scorer(source, small_model), source="test", max_size=4)
    batch = [ChurnRequest(customer_id=c) for c in ("B", "NOPE", "A")]
    single, many = await asyncio.gather(
        batcher.score(ChurnRequest(customer_id="A")), batcher.score_many(batch)
    )
    assert [r.customer_id for r in many] == ["B", "NOPE", "A"]
    assert isinstance(many[1], ErrorReply)
    assert isinstance(single, ChurnScore)
    # One feature read for both callers (4 requests, within max_size).
    assert source.calls == [["A", "B", "NOPE"]]
    # A caller's batch over max_size is scored whole, in one read.
    big = [ChurnRequest(customer_id=c) for c in "ABABAB"]
    assert len(await batcher.score_many(big)) == 6
    assert source.calls[-1] == ["A", "B"]
    batcher.close()


async def test_a_queue_that_does_not_drain_in_time_is_overload(
    small_model: ChurnModel,
) -> None:
    """Reads that each take little but queue up past the deadline: overloaded."""

    class SlowFeatures(FakeFeatures):
        def get(self, ids: Sequence[str]) -> list[Mapping[str, object] | None]:
            time.sleep(0.05)
            return super().get(ids)

    batcher = MicroBatcher(
        Scorer(SlowFeatures({"A": ROW}), small_model),
        source="test",
        max_size=1,
        timeout=0.3,
    )
    outcomes = await asyncio.gather(
        *(batcher.score(ChurnRequest(customer_id="A")) for _ in range(20)),
        return_exceptions=True,
    )
    batcher.close()
    assert isinstance(outcomes[0], ChurnScore)
    assert isinstance(outcomes[-1], Overloaded), outcomes[-1]
    assert not any(isinstance(o, FeatureStoreUnavailable) for o in outcomes)


async def test_callers_queued_behind_a_stuck_read_blame_the_store(
    small_model: ChurnModel,
) -> None:
    source = StalledFeatures({"A": ROW}, hang=5.0)
    batcher = MicroBatcher(Scorer(source, small_model), source="test", timeout=0.3)
    first = asyncio.ensure_future(batcher.score(ChurnRequest(customer_id="A")))
    await asyncio.to_thread(source.entered.wait, 2.0)
    # Parked behind the stuck read, before it is stuck past the deadline.
    with pytest.raises(FeatureStoreUnavailable):
        await batcher.score(ChurnRequest(customer_id="A"))
    with pytest.raises(FeatureStoreUnavailable):
        await first
    source.released.set()
    batcher.close()


async def test_callers_queued_behind_a_failing_read_blame_the_store(
    small_model: ChurnModel,
) -> None:
    """The read fails at about the deadline (Redis' socket timeout = deadline)."""
    source = StalledFeatures({"A": ROW}, hang=0.3)
    source.fail = True
    batcher = MicroBatcher(Scorer(source, small_model), source="test", timeout=0.3)
    first = asyncio.ensure_future(batcher.score(ChurnRequest(customer_id="A")))
    await asyncio.to_thread(source.entered.wait, 2.0)
    behind = [batcher.score(ChurnRequest(customer_id="A")) for _ in range(5)]
    outcomes = await asyncio.gather(first, *behind, return_exceptions=True)
    batcher.close()
    assert all(isinstance(o, FeatureStoreUnavailable) for o in outcomes), outcomes
