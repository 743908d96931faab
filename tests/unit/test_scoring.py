from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from predictflow.contract import ChurnRequest, ChurnScore, ErrorReply
from predictflow.encoding import FEATURES, encode_rows
from predictflow.errors import FeatureStoreUnavailable
from predictflow.model import ChurnModel
from predictflow.scoring import Scorer
from tests.unit.test_encoding import ROW


class FakeFeatures:
    """An in-memory feature source that records every call."""

    def __init__(self, rows: dict[str, Mapping[str, object]]) -> None:
        self.rows = rows
        self.calls: list[list[str]] = []
        self.fail = False

    def get(self, customer_ids: Sequence[str]) -> list[Mapping[str, object] | None]:
        self.calls.append(list(customer_ids))
        if self.fail:
            raise FeatureStoreUnavailable("store down")
        return [self.rows.get(cid) for cid in customer_ids]


@pytest.fixture
def source() -> FakeFeatures:
    return FakeFeatures({"A": ROW, "B": {**ROW, "contract": "Two year", "tenure": 60}})


def test_one_feature_read_for_the_whole_batch(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    requests = [ChurnRequest(customer_id=c) for c in ("A", "B", "A")]
    results = Scorer(source, small_model).score(requests, source="test")
    assert source.calls == [["A", "B"]]
    assert [r.customer_id for r in results] == ["A", "B", "A"]
    assert all(isinstance(r, ChurnScore) for r in results)
    assert results[0] == results[2]


def test_scores_equal_the_model_on_the_stored_features(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    (result,) = Scorer(source, small_model).score(
        [ChurnRequest(customer_id="B")], source="test"
    )
    expected = small_model.predict(encode_rows([source.rows["B"]]))[0]
    assert isinstance(result, ChurnScore)
    assert result.churn_probability == pytest.approx(expected, abs=1e-9)
    assert result.model_version == "churn-predictor:test"


def test_request_fields_override_stored_ones(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    scorer = Scorer(source, small_model)
    (stored,) = scorer.score([ChurnRequest(customer_id="B")], source="test")
    (overridden,) = scorer.score(
        [ChurnRequest(customer_id="B", contract="Month-to-month", tenure=1)],
        source="test",
    )
    expected = small_model.predict(
        encode_rows([{**source.rows["B"], "contract": "Month-to-month", "tenure": 1}])
    )[0]
    assert isinstance(overridden, ChurnScore) and isinstance(stored, ChurnScore)
    assert overridden.churn_probability == pytest.approx(expected, abs=1e-9)
    assert overridden.churn_probability != stored.churn_probability


def test_unknown_customer_gets_an_error_and_the_rest_is_scored(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    results = Scorer(source, small_model).score(
        [ChurnRequest(customer_id="A"), ChurnRequest(customer_id="NOPE")],
        source="test",
    )
    assert isinstance(results[0], ChurnScore)
    assert isinstance(results[1], ErrorReply)
    assert results[1].error == "unknown_customer"
    assert results[1].customer_id == "NOPE"


def test_a_fully_described_new_customer_needs_no_feature_read(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    request = ChurnRequest.model_validate({"customer_id": "NEW", **ROW})
    (result,) = Scorer(source, small_model).score([request], source="test")
    assert isinstance(result, ChurnScore)
    assert source.calls == []
    assert set(request.overrides()) == set(FEATURES)


def test_store_failure_fails_the_batch(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    source.fail = True
    with pytest.raises(FeatureStoreUnavailable):
        Scorer(source, small_model).score([ChurnRequest(customer_id="A")], source="t")


def test_scores_are_deterministic(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    scorer = Scorer(source, small_model)
    batch = [ChurnRequest(customer_id="A"), ChurnRequest(customer_id="B")]
    assert scorer.score(batch, source="t") == scorer.score(batch, source="t")


def test_a_row_the_model_cannot_encode_fails_only_its_own_request(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    source.rows["BAD"] = {**ROW, "internet_service": "Satellite"}
    requests = [ChurnRequest(customer_id=c) for c in ("A", "BAD", "B")]
    results = Scorer(source, small_model).score(requests, source="test")
    assert [r.customer_id for r in results] == ["A", "BAD", "B"]
    assert isinstance(results[0], ChurnScore)
    assert isinstance(results[2], ChurnScore)
    bad = results[1]
    assert isinstance(bad, ErrorReply)
    assert bad.error == "internal_error"
    assert not bad.retryable
    # The cause stays in the log: no stored value in what the caller sees.
    assert "Satellite" not in bad.message


def test_feature_store_outage_replies_are_retryable() -> None:
    reply = FeatureStoreUnavailable("store down", customer_id="A").to_reply()
    assert reply.retryable and reply.error == "feature_store_unavailable"


def _sigmoid(z: float) -> float:
    import math

    return 1.0 / (1.0 + math.exp(-z))


def test_reasons_add_up_to_the_score(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    requests = [ChurnRequest(customer_id=c, explain=len(FEATURES)) for c in "AB"]
    for result in Scorer(source, small_model).score(requests, source="test"):
        assert isinstance(result, ChurnScore) and result.reasons is not None
        assert result.base_log_odds is not None
        assert {r.feature for r in result.reasons} == set(FEATURES)
        total = result.base_log_odds + sum(r.contribution for r in result.reasons)
        assert _sigmoid(total) == pytest.approx(result.churn_probability, abs=1e-5)


def test_reasons_are_the_largest_fields_named_by_the_contract(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    (top3,) = Scorer(source, small_model).score(
        [ChurnRequest(customer_id="A", explain=3)], source="test"
    )
    (every,) = Scorer(source, small_model).score(
        [ChurnRequest(customer_id="A", explain=len(FEATURES))], source="test"
    )
    assert isinstance(top3, ChurnScore) and isinstance(every, ChurnScore)
    assert top3.reasons is not None and every.reasons is not None
    assert top3.reasons == every.reasons[:3]
    sizes = [abs(r.contribution) for r in every.reasons]
    assert sizes == sorted(sizes, reverse=True)
    assert all("=" not in r.feature for r in every.reasons)
    by_name = {r.feature: r for r in every.reasons}
    assert by_name["contract"].value == ROW["contract"]


def test_a_score_without_explain_is_unchanged_byte_for_byte(
    source: FakeFeatures, small_model: ChurnModel
) -> None:
    scorer = Scorer(source, small_model)
    (plain,) = scorer.score([ChurnRequest(customer_id="A")], source="test")
    (explained,) = scorer.score(
        [ChurnRequest(customer_id="A", explain=2)], source="test"
    )
    assert isinstance(plain, ChurnScore) and isinstance(explained, ChurnScore)
    assert plain.model_dump_json() == (
        '{"customer_id":"A","churn_probability":'
        f'{plain.churn_probability},"model_version":"churn-predictor:test"}}'
    )
    assert explained.churn_probability == plain.churn_probability


def test_explain_is_not_an_override() -> None:
    assert ChurnRequest(customer_id="A", explain=3).overrides() == {}
