"""The served model: an XGBoost booster read straight from its MLflow model directory.

MLflow's pyfunc wrapper is skipped on purpose: it goes through a pandas
DataFrame, several times slower than `inplace_predict` on a numpy array, and
importing MLflow into the serving process grows the heap that every garbage
collection walks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from predictflow.encoding import ENCODED_FEATURES
from predictflow.errors import ModelUnavailable


class ChurnModel:
    """Churn probabilities from encoded feature rows."""

    def __init__(self, booster: Any, version: str) -> None:
        names = tuple(booster.feature_names or ())
        if names != ENCODED_FEATURES:
            raise ModelUnavailable(
                f"model {version} expects features {names}, this code encodes "
                f"{ENCODED_FEATURES}: retrain with this version of predictflow"
            )
        self.booster = booster
        self.version = version

    @classmethod
    def from_mlflow_dir(cls, path: Path, version: str) -> ChurnModel:
        """Load the booster of an MLflow `xgboost` flavour model directory."""
        import xgboost as xgb

        mlmodel = path / "MLmodel"
        if not mlmodel.is_file():
            raise ModelUnavailable(f"{path} holds no MLflow model (no MLmodel file)")
        flavors = yaml.safe_load(mlmodel.read_text()).get("flavors", {})
        if "xgboost" not in flavors:
            raise ModelUnavailable(f"{path}: not an xgboost model ({list(flavors)})")
        booster = xgb.Booster()
        booster.load_model(str(path / flavors["xgboost"]["data"]))
        # One thread: a request scores a handful of rows, and the service
        # already runs one process per core.
        booster.set_param({"nthread": 1})
        return cls(booster, version)

    def contributions(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Exact per-column contributions to each row's log-odds (TreeSHAP).

        One row per input row, one column per encoded feature plus the bias
        last; each row sums to the row's log-odds.
        """
        import xgboost as xgb

        matrix = xgb.DMatrix(x, feature_names=list(ENCODED_FEATURES))
        return np.asarray(
            self.booster.predict(matrix, pred_contribs=True), dtype=np.float64
        )

    def predict(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Churn probability of each row."""
        if len(x) == 0:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self.booster.inplace_predict(x), dtype=np.float64)
