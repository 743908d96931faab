from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from predictflow.data import LABEL, synthetic_customers
from predictflow.encoding import ENCODED_FEATURES, FEATURES, encode_columns
from predictflow.model import ChurnModel


@pytest.fixture(scope="session")
def small_model() -> ChurnModel:
    """A real booster trained in a second on synthetic customers."""
    df = synthetic_customers(3000, seed=11)
    x = encode_columns({name: df[name].tolist() for name in FEATURES})
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": 0},
        xgb.DMatrix(
            x, label=df[LABEL].to_numpy(), feature_names=list(ENCODED_FEATURES)
        ),
        num_boost_round=20,
    )
    return ChurnModel(booster, "churn-predictor:test")


@pytest.fixture(autouse=True)
def _no_stray_numpy_errors() -> None:
    np.seterr(all="raise")
