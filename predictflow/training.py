"""Train the churn model (XGBoost, with a logistic-regression baseline) and log it.

One fixed, seeded, stratified 80/20 split; the held-out 20 % is never used to
fit or to stop early. Beside that one split, `cross_validate` repeats the whole
XGBoost recipe on 5 stratified folds of the training 80 %, so the luck of one
split shows. Every run logs its params, metrics (ROC AUC, PR AUC, log loss,
Brier) and model to MLflow; the XGBoost model is registered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from predictflow.data import LABEL
from predictflow.encoding import ENCODED_FEATURES, FEATURES, encode_columns

SPLIT_SEED = 42
TEST_FRACTION = 0.2
CV_FOLDS = 5
#: XGBoost threads. One: on a few thousand rows a second OpenMP thread only
#: adds synchronisation, and on a busy machine its spin-waits cost far more
#: than the work. The trees do not depend on it.
NTHREAD = 1


@dataclass(frozen=True)
class XGBoostParams:
    """Hyper-parameters of the XGBoost model (logged to MLflow as params)."""

    max_depth: int = 3
    eta: float = 0.03
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    min_child_weight: float = 10.0
    reg_lambda: float = 2.0
    max_rounds: int = 2000
    early_stopping_rounds: int = 200
    seed: int = 7


@dataclass(frozen=True)
class Split:
    """The encoded train and held-out test sets."""

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]


@dataclass
class TrainedModel:
    """A fitted model, its held-out metrics and what produced it."""

    kind: str
    model: Any
    metrics: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)


def encode_frame(df: pd.DataFrame) -> npt.NDArray[np.float32]:
    """Encode a data frame holding the 19 feature columns."""
    return encode_columns({name: df[name].tolist() for name in FEATURES})


def split(df: pd.DataFrame) -> Split:
    """The project's fixed, seeded, stratified 80/20 split."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        df, test_size=TEST_FRACTION, stratify=df[LABEL], random_state=SPLIT_SEED
    )
    return Split(
        x_train=encode_frame(train),
        y_train=train[LABEL].to_numpy(dtype=np.int64),
        x_test=encode_frame(test),
        y_test=test[LABEL].to_numpy(dtype=np.int64),
    )


def evaluate(y_true: npt.NDArray[np.int64], p: npt.NDArray[Any]) -> dict[str, float]:
    """Held-out metrics of predicted churn probabilities."""
    from sklearn.metrics import (
        average_precision_score,
        brier_score_loss,
        log_loss,
        roc_auc_score,
    )

    return {
        "roc_auc": float(roc_auc_score(y_true, p)),
        "pr_auc": float(average_precision_score(y_true, p)),
        "log_loss": float(log_loss(y_true, p)),
        "brier": float(brier_score_loss(y_true, p)),
    }


@dataclass(frozen=True)
class CrossValidation:
    """ROC AUC of the XGBoost recipe on each validation fold of the training set."""

    fold_roc_auc: tuple[float, ...]

    @property
    def mean(self) -> float:
        """Mean ROC AUC over the folds."""
        return float(np.mean(self.fold_roc_auc))

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1) of the folds' ROC AUC."""
        return float(np.std(self.fold_roc_auc, ddof=1))

    def metrics(self) -> dict[str, float]:
        """The MLflow metrics: `cv_roc_auc_mean`, `cv_roc_auc_std`."""
        return {"cv_roc_auc_mean": self.mean, "cv_roc_auc_std": self.std}


def fit_xgboost(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], params: XGBoostParams
) -> Any:
    """The recipe: early stopping watches a 15 % slice of `x`, trees cut at the best."""
    import xgboost as xgb
    from sklearn.model_selection import train_test_split

    x_fit, x_val, y_fit, y_val = train_test_split(
        x, y, test_size=0.15, stratify=y, random_state=params.seed
    )
    names = list(ENCODED_FEATURES)
    dfit = xgb.DMatrix(x_fit, label=y_fit, feature_names=names)
    dval = xgb.DMatrix(x_val, label=y_val, feature_names=names)
    booster = xgb.train(
        {
            "objective": "binary:logistic",
            "eval_metric": "auc",
            "tree_method": "hist",
            "max_depth": params.max_depth,
            "eta": params.eta,
            "subsample": params.subsample,
            "colsample_bytree": params.colsample_bytree,
            "min_child_weight": params.min_child_weight,
            "lambda": params.reg_lambda,
            "seed": params.seed,
            "nthread": NTHREAD,
        },
        dfit,
        num_boost_round=params.max_rounds,
        evals=[(dval, "validation")],
        early_stopping_rounds=params.early_stopping_rounds,
        verbose_eval=False,
    )
    # Keep only the trees up to the best round, so serving needs no range.
    return booster[: booster.best_iteration + 1]


def train_xgboost(data: Split, params: XGBoostParams | None = None) -> TrainedModel:
    """Fit XGBoost on the training set; metrics on the held-out set."""
    params = params or XGBoostParams()
    booster = fit_xgboost(data.x_train, data.y_train, params)
    p = booster.inplace_predict(data.x_test)
    return TrainedModel(
        kind="xgboost",
        model=booster,
        metrics=evaluate(data.y_test, p),
        params={**asdict(params), "best_rounds": booster.num_boosted_rounds()},
    )


def cross_validate(
    data: Split, params: XGBoostParams | None = None, folds: int = CV_FOLDS
) -> CrossValidation:
    """Stratified k-fold ROC AUC of the whole recipe, on the training set only.

    Each fold refits exactly as `train_xgboost` does (same params, early
    stopping on a slice of the fold's own training part); the held-out test
    set is never touched.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    params = params or XGBoostParams()
    kfold = StratifiedKFold(n_splits=folds, shuffle=True, random_state=SPLIT_SEED)
    scores = []
    for fit, val in kfold.split(data.x_train, data.y_train):
        booster = fit_xgboost(data.x_train[fit], data.y_train[fit], params)
        p = booster.inplace_predict(data.x_train[val])
        scores.append(float(roc_auc_score(data.y_train[val], p)))
    return CrossValidation(tuple(scores))


def train_baseline(data: Split) -> TrainedModel:
    """Fit the logistic-regression baseline on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    model.fit(data.x_train, data.y_train)
    p = model.predict_proba(data.x_test)[:, 1]
    return TrainedModel(
        kind="logistic_regression",
        model=model,
        metrics=evaluate(data.y_test, p),
        params={"C": 1.0, "max_iter": 2000, "scaler": "standard"},
    )
