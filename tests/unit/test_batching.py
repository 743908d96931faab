"""MicroBatcher: concurrent requests share one Scorer call, each gets its result."""

from __future__ import annotations

import asyncio

import pytest

from predictflow.batching import MicroBatcher
from predictflow.contract import ChurnRequest, ChurnScore, ErrorReply
from predictflow.errors import FeatureStoreUnavailable
from predictflow.model import ChurnModel
from predictflow.scoring import Scorer
from tests.unit.test_schema import ROW
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
