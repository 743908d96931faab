"""Behavioural and quality tests of the trained churn model (Made-With-ML style)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from predictflow import training
from predictflow.encoding import FEATURES, encode_rows
from predictflow.model import ChurnModel


@pytest.fixture(scope="module")
def model(trained: training.TrainedModel) -> ChurnModel:
    return ChurnModel(trained.model, "test")


@pytest.fixture(scope="module")
def customers(telco: pd.DataFrame) -> list[dict[str, object]]:
    sample = telco.sample(500, random_state=0)
    return [{f: row[f] for f in FEATURES} for _, row in sample.iterrows()]


def _scores(model: ChurnModel, rows: list[dict[str, object]]) -> np.ndarray:
    return model.predict(encode_rows(rows))


def test_held_out_quality(trained: training.TrainedModel) -> None:
    assert trained.metrics["roc_auc"] >= 0.84
    assert trained.metrics["brier"] <= 0.15


def test_beats_a_constant_and_matches_the_baseline(
    split: training.Split, trained: training.TrainedModel
) -> None:
    baseline = training.train_baseline(split)
    prior = float(split.y_train.mean())
    constant = training.evaluate(split.y_test, np.full(len(split.y_test), prior))
    assert trained.metrics["log_loss"] < constant["log_loss"]
    assert trained.metrics["roc_auc"] >= baseline.metrics["roc_auc"] - 0.01


def test_month_to_month_is_riskier_than_two_year(
    model: ChurnModel, customers: list[dict[str, object]]
) -> None:
    m2m = _scores(model, [{**c, "contract": "Month-to-month"} for c in customers])
    two = _scores(model, [{**c, "contract": "Two year"} for c in customers])
    assert (m2m >= two).mean() >= 0.95
    assert (m2m - two).mean() > 0.05


def test_longer_tenure_lowers_risk(
    model: ChurnModel, customers: list[dict[str, object]]
) -> None:
    def with_tenure(c: dict[str, object], months: int) -> dict[str, object]:
        monthly = float(c["monthly_charges"])  # type: ignore[arg-type]
        return {**c, "tenure": months, "total_charges": monthly * months}

    short = _scores(model, [with_tenure(c, 2) for c in customers])
    long = _scores(model, [with_tenure(c, 60) for c in customers])
    assert (short >= long).mean() >= 0.9


def test_gender_barely_moves_the_score(
    model: ChurnModel, customers: list[dict[str, object]]
) -> None:
    female = _scores(model, [{**c, "gender": "Female"} for c in customers])
    male = _scores(model, [{**c, "gender": "Male"} for c in customers])
    assert np.abs(female - male).max() < 0.1


def test_scores_are_deterministic_and_probabilities(
    model: ChurnModel, customers: list[dict[str, object]]
) -> None:
    a = _scores(model, customers)
    b = _scores(model, customers)
    np.testing.assert_array_equal(a, b)
    assert ((a >= 0) & (a <= 1)).all()


def test_training_is_reproducible(
    split: training.Split, trained: training.TrainedModel
) -> None:
    again = training.train_xgboost(split)
    assert again.metrics == trained.metrics


class _Rows:
    """A feature source over in-memory customers (by position as id)."""

    def __init__(self, rows: list[dict[str, object]]) -> None:
        self.rows = {str(i): row for i, row in enumerate(rows)}

    def get(self, customer_ids: object) -> list[object]:
        return [self.rows.get(c) for c in customer_ids]  # type: ignore[attr-defined]


def test_reasons_add_up_for_a_thousand_customers(
    model: ChurnModel, telco: pd.DataFrame
) -> None:
    from predictflow.contract import ChurnRequest, ChurnScore
    from predictflow.scoring import Scorer

    sample = telco.sample(1000, random_state=1)
    rows = [{f: row[f] for f in FEATURES} for _, row in sample.iterrows()]
    scorer = Scorer(_Rows(rows), model)  # type: ignore[arg-type]
    requests = [
        ChurnRequest(customer_id=str(i), explain=len(FEATURES))
        for i in range(len(rows))
    ]
    for result in scorer.score(requests, source="test"):
        assert isinstance(result, ChurnScore)
        assert result.reasons is not None and result.base_log_odds is not None
        z = result.base_log_odds + sum(r.contribution for r in result.reasons)
        assert 1 / (1 + np.exp(-z)) == pytest.approx(result.churn_probability, abs=1e-5)


@pytest.mark.parametrize(
    ("contract", "sign"), [("Month-to-month", 1), ("Two year", -1)]
)
def test_the_contract_reason_points_the_right_way(
    model: ChurnModel, customers: list[dict[str, object]], contract: str, sign: int
) -> None:
    from predictflow.contract import ChurnRequest, ChurnScore
    from predictflow.scoring import Scorer

    rows = [{**row, "contract": contract} for row in customers]
    scorer = Scorer(_Rows(rows), model)  # type: ignore[arg-type]
    requests = [
        ChurnRequest(customer_id=str(i), explain=len(FEATURES))
        for i in range(len(rows))
    ]
    signs = []
    for result in scorer.score(requests, source="test"):
        assert isinstance(result, ChurnScore) and result.reasons is not None
        (reason,) = [r for r in result.reasons if r.feature == "contract"]
        assert reason.value == contract
        signs.append(np.sign(reason.contribution))
    # Every customer, not most: the contract's direction is the model's most
    # stable behaviour on this data.
    assert all(s == sign for s in signs), f"{signs.count(-sign)} point the other way"
