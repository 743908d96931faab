"""Cross-validation of the XGBoost recipe: k folds, on the training set only."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from predictflow import training
from predictflow.data import synthetic_customers

#: A quick recipe: the same code path, a fraction of the rounds.
QUICK = training.XGBoostParams(max_rounds=60, early_stopping_rounds=20)


@pytest.fixture(scope="module")
def synthetic_split() -> training.Split:
    df = synthetic_customers(2500, seed=5)
    return training.split(df)


def test_one_auc_per_fold(synthetic_split: training.Split) -> None:
    cv = training.cross_validate(synthetic_split, QUICK, folds=5)
    assert len(cv.fold_roc_auc) == 5
    assert all(0.6 < auc <= 1.0 for auc in cv.fold_roc_auc)
    assert cv.std >= 0
    assert min(cv.fold_roc_auc) <= cv.mean <= max(cv.fold_roc_auc)
    assert cv.metrics() == {"cv_roc_auc_mean": cv.mean, "cv_roc_auc_std": cv.std}


def test_std_is_the_sample_std() -> None:
    cv = training.CrossValidation((0.8, 0.9))
    assert cv.mean == pytest.approx(0.85)
    assert cv.std == pytest.approx(np.sqrt(0.005))  # ddof=1: |0.9 - 0.8| / sqrt(2)


def test_never_sees_the_held_out_rows(
    synthetic_split: training.Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folds fit and score training rows only; the held-out set is not read."""
    marked = training.Split(
        x_train=synthetic_split.x_train,
        y_train=synthetic_split.y_train,
        # Any use of these would show: NaN features, an impossible label.
        x_test=np.full_like(synthetic_split.x_test, np.nan),
        y_test=np.full_like(synthetic_split.y_test, 7),
    )
    fitted: list[int] = []
    fit = training.fit_xgboost

    def spy(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], p: Any) -> Any:
        assert not np.isnan(x).any() and set(np.unique(y)) <= {0, 1}
        fitted.append(len(x))
        return fit(x, y, p)

    monkeypatch.setattr(training, "fit_xgboost", spy)
    cv = training.cross_validate(marked, QUICK, folds=4)
    n = len(marked.y_train)
    # Each fold fits on the other three quarters of the training set.
    assert fitted == pytest.approx([n * 3 / 4] * 4, abs=1)
    assert cv == training.cross_validate(synthetic_split, QUICK, folds=4)


def test_is_deterministic(synthetic_split: training.Split) -> None:
    a = training.cross_validate(synthetic_split, QUICK, folds=3)
    b = training.cross_validate(synthetic_split, QUICK, folds=3)
    assert a == b
