"""Cross-validated ROC AUC of the recipe on the Telco training set."""

from __future__ import annotations

from predictflow import training


def test_cross_validated_auc_is_stable_and_near_the_held_out_one(
    split: training.Split, trained: training.TrainedModel
) -> None:
    cv = training.cross_validate(split)
    assert len(cv.fold_roc_auc) == training.CV_FOLDS == 5
    assert 0.82 <= cv.mean <= 0.88
    assert 0 <= cv.std <= 0.03
    # One split's luck: the held-out AUC should sit inside the folds' spread.
    assert abs(trained.metrics["roc_auc"] - cv.mean) <= max(2 * cv.std, 0.01)
