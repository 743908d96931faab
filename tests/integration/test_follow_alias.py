"""A serving process follows its MLflow alias: a good version in, a bad one refused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest
import xgboost as xgb

from predictflow.contract import ChurnRequest, ChurnScore
from predictflow.data import LABEL, synthetic_customers
from predictflow.lifecycle import ModelFollower
from predictflow.model import ChurnModel
from predictflow.schema import ENCODED_FEATURES, FEATURES, encode_columns
from predictflow.scoring import Scorer
from predictflow.settings import Settings

# MLflow's pyfunc types warn on import when a model is logged in-process.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*Any type hint is inferred:UserWarning"
)


class Stored:
    def __init__(self) -> None:
        frame = synthetic_customers(5, seed=3)
        self.rows = {
            str(i): {
                f: frame[f].iloc[i].item()
                if hasattr(frame[f].iloc[i], "item")
                else frame[f].iloc[i]
                for f in FEATURES
            }
            for i in range(5)
        }

    def get(self, ids: Sequence[str]) -> list[Mapping[str, object] | None]:
        return [self.rows.get(i) for i in ids]


def _booster(seed: int, drop: str | None = None) -> xgb.Booster:
    df = synthetic_customers(2000, seed=seed)
    x = encode_columns({name: df[name].tolist() for name in FEATURES})
    names = list(ENCODED_FEATURES)
    if drop is not None:
        keep = [i for i, n in enumerate(names) if n != drop]
        x, names = x[:, keep], [names[i] for i in keep]
    return xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "nthread": 1, "seed": seed},
        xgb.DMatrix(x, label=df[LABEL].to_numpy(), feature_names=names),
        num_boost_round=10,
    )


def _register(settings: Settings, booster: xgb.Booster, alias: str) -> str:
    import mlflow
    import mlflow.xgboost
    import pandas as pd
    from mlflow.models import infer_signature

    from predictflow.registry import client, ensure_experiment

    ensure_experiment(settings)
    names = list(booster.feature_names or ())
    example = pd.DataFrame(np.zeros((1, len(names)), dtype=np.float32), columns=names)
    with mlflow.start_run():
        info = mlflow.xgboost.log_model(
            booster,
            name="model",
            signature=infer_signature(example, np.zeros(1, dtype=np.float32)),
            model_format="ubj",
        )
        mv = mlflow.register_model(info.model_uri, settings.mlflow.model_name)
    client(settings).set_registered_model_alias(
        settings.mlflow.model_name, alias, mv.version
    )
    return str(mv.version)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A registry of this module's own (a local MLflow store)."""
    root = tmp_path_factory.mktemp("registry")
    return Settings(
        data_dir=root / "var",
        mlflow={"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
    )


def test_follows_a_good_version_and_refuses_a_bad_one(settings: Settings) -> None:
    first = _register(settings, _booster(1), "champion")
    booster = _booster(1)
    scorer = Scorer(Stored(), ChurnModel(booster, f"churn-predictor:{first}"))
    follower = ModelFollower(scorer, settings)
    assert follower.check() == "unchanged"

    second = _register(settings, _booster(2), "champion")
    assert follower.check() == "swapped"
    assert scorer.model.version == f"churn-predictor:{second}"
    (score,) = scorer.score([ChurnRequest(customer_id="0")], source="test")
    assert isinstance(score, ChurnScore)
    assert score.model_version == f"churn-predictor:{second}"

    # A model trained without one of the contract's features must not serve.
    _register(settings, _booster(3, drop="tenure"), "champion")
    assert follower.check() == "refused"
    assert scorer.model.version == f"churn-predictor:{second}"
    assert follower.check() == "unchanged"  # remembered, not loaded again


def test_an_unknown_alias_keeps_the_bento_model(settings: Settings) -> None:
    scorer = Scorer(Stored(), ChurnModel(_booster(1), "churn-predictor:7"))
    follower = ModelFollower(
        scorer,
        settings.model_copy(
            update={"model": settings.model.model_copy(update={"alias": "challenger"})}
        ),
    )
    assert follower.check() == "unchanged"
    assert scorer.model.version == "churn-predictor:7"
