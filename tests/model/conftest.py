from __future__ import annotations

import pandas as pd
import pytest

from predictflow import training
from predictflow.data import load_telco


@pytest.fixture(scope="session")
def telco() -> pd.DataFrame:
    return load_telco()


@pytest.fixture(scope="session")
def split(telco: pd.DataFrame) -> training.Split:
    return training.split(telco)


@pytest.fixture(scope="session")
def trained(split: training.Split) -> training.TrainedModel:
    return training.train_xgboost(split)
