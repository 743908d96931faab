"""The evaluation's numbers (deciles, calibration, importance) and its files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from predictflow import evaluation, training
from predictflow.data import synthetic_customers
from predictflow.encoding import ENCODED_FEATURES, FEATURES
from predictflow.model import ChurnModel

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_deciles_on_a_known_ranking() -> None:
    # Ten customers, two churners, shuffled; the scores rank them 9..0.
    order = np.array([3, 7, 0, 9, 5, 1, 8, 2, 6, 4])
    p = order / 10
    y = np.where(np.isin(order, [9, 7]), 1, 0)  # churners: ranks 1 and 3
    rows = evaluation.deciles(y, p, groups=5)
    assert [r.customers for r in rows] == [2] * 5
    assert [r.churners for r in rows] == [1, 1, 0, 0, 0]
    top = rows[0]
    assert (top.min_score, top.max_score) == (0.8, 0.9)
    assert top.churn_rate == 0.5
    assert top.lift == pytest.approx(2.5)  # 0.5 against 2 in 10 overall
    assert top.cumulative_gain == 0.5
    assert rows[1].cumulative_customers == pytest.approx(0.4)
    assert rows[1].cumulative_gain == 1.0
    assert rows[1].cumulative_lift == pytest.approx(2.5)
    assert rows[-1].cumulative_gain == 1.0 and rows[-1].cumulative_lift == 1.0


def test_deciles_split_uneven_counts_and_ties_by_position() -> None:
    y = np.array([1, 0] * 11 + [1])
    p = np.full(23, 0.5)  # all tied: input order decides
    rows = evaluation.deciles(y, p)
    assert [r.customers for r in rows] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert sum(r.churners for r in rows) == 12
    assert rows[0].churners == 2  # rows 0, 1, 2 of the input: 1, 0, 1


def test_a_perfect_ranking_gains_everything_early() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(1000) < 0.2).astype(np.int64)
    rows = evaluation.deciles(y, y + rng.random(1000) * 0.5)
    prevalence = y.mean()
    assert rows[0].lift == pytest.approx(1 / prevalence)
    assert rows[2].cumulative_gain == 1.0  # 20 % of churners fit in 3 deciles


@pytest.mark.parametrize(
    ("y", "p"),
    [(np.array([1, 0, 1]), np.array([0.1, 0.2, 0.3])), (np.zeros(20), np.ones(20))],
)
def test_deciles_refuse_what_they_cannot_rank(y: np.ndarray, p: np.ndarray) -> None:
    with pytest.raises(ValueError, match="at least|no churners"):
        evaluation.deciles(y, p)


def test_calibration_bins_on_known_inputs() -> None:
    p = np.array([0.05, 0.15, 0.15, 0.95, 1.0, 0.1])
    y = np.array([0, 1, 0, 1, 1, 0])
    bins = evaluation.calibration_bins(y, p)
    assert [(b.lower, b.upper, b.customers) for b in bins] == [
        (0.0, 0.1, 1),
        (0.1, 0.2, 3),  # 0.1 opens the second bin
        (0.9, 1.0, 2),  # 1.0 closes the last
    ]
    assert [b.mean_predicted for b in bins] == pytest.approx([0.05, 0.4 / 3, 0.975])
    assert [b.observed_rate for b in bins] == pytest.approx([0.0, 1 / 3, 1.0])


def test_calibration_bins_agree_with_scikit_learn() -> None:
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(1)
    p = rng.beta(1, 3, 5000)
    y = (rng.random(5000) < p).astype(np.int64)
    bins = evaluation.calibration_bins(y, p)
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose([b.observed_rate for b in bins], observed)
    np.testing.assert_allclose([b.mean_predicted for b in bins], predicted)
    assert sum(b.customers for b in bins) == 5000


def test_calibration_refuses_non_probabilities() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        evaluation.calibration_bins(np.array([0, 1]), np.array([0.5, 1.5]))


def test_importance_sums_one_hot_columns_back_to_their_field(
    small_model: ChurnModel,
) -> None:
    x = _encoded(400)
    importance = evaluation.field_importance(small_model, x)
    assert set(importance) == set(FEATURES)
    values = list(importance.values())
    assert values == sorted(values, reverse=True)
    contributions = small_model.contributions(x)
    tenure = ENCODED_FEATURES.index("tenure")
    assert importance["tenure"] == pytest.approx(
        np.abs(contributions[:, tenure]).mean()
    )
    contract = [i for i, c in enumerate(ENCODED_FEATURES) if c.startswith("contract=")]
    assert len(contract) == 3
    assert importance["contract"] == pytest.approx(
        np.abs(contributions[:, contract].sum(axis=1)).mean()
    )


def test_write_the_evaluation_files(small_model: ChurnModel, tmp_path: Path) -> None:
    split = training.split(synthetic_customers(1500, seed=3))
    cv = training.CrossValidation((0.81, 0.83, 0.8, 0.84, 0.82))
    ev = evaluation.evaluate_model(small_model, split, cv)
    paths = evaluation.write(ev, tmp_path)
    assert {p.name for p in paths} == {
        *evaluation.IMAGES.values(),
        evaluation.DECILES_CSV,
        evaluation.SUMMARY_JSON,
    }
    for name in evaluation.IMAGES.values():
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) < 100_000
        with Image.open(tmp_path / name) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) >= 300
    summary = json.loads((tmp_path / evaluation.SUMMARY_JSON).read_text())
    assert summary["held_out"]["customers"] == len(split.y_test)
    assert summary["cv"]["roc_auc_mean"] == pytest.approx(0.82)
    assert sum(d["customers"] for d in summary["deciles"]) == len(split.y_test)
    csv_lines = (tmp_path / evaluation.DECILES_CSV).read_text().splitlines()
    assert (
        csv_lines[0].startswith("decile,customers,churners,") and len(csv_lines) == 11
    )


def _encoded(n: int) -> np.ndarray:
    from predictflow.encoding import encode_columns

    df = synthetic_customers(n, seed=9)
    return encode_columns({name: df[name].tolist() for name in FEATURES})
