"""A serving process follows its MLflow alias: a good version in, a bad one refused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from predictflow.contract import ChurnRequest, ChurnScore
from predictflow.data import synthetic_customers
from predictflow.encoding import FEATURES
from predictflow.lifecycle import ModelFollower
from predictflow.model import ChurnModel
from predictflow.scoring import Scorer
from predictflow.settings import Settings
from tests.registry_support import register, small_booster

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


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A registry of this module's own (a local MLflow store)."""
    root = tmp_path_factory.mktemp("registry")
    return Settings(
        data_dir=root / "var",
        mlflow={"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
    )


def test_follows_a_good_version_and_refuses_a_bad_one(settings: Settings) -> None:
    first = register(settings, small_booster(1), "champion")
    booster = small_booster(1)
    scorer = Scorer(Stored(), ChurnModel(booster, f"churn-predictor:{first}"))
    follower = ModelFollower(scorer, settings)
    assert follower.check() == "unchanged"

    second = register(settings, small_booster(2), "champion")
    assert follower.check() == "swapped"
    assert scorer.model.version == f"churn-predictor:{second}"
    (score,) = scorer.score([ChurnRequest(customer_id="0")], source="test")
    assert isinstance(score, ChurnScore)
    assert score.model_version == f"churn-predictor:{second}"

    # A model trained without one of the contract's features must not serve.
    register(settings, small_booster(3, drop="tenure"), "champion")
    assert follower.check() == "refused"
    assert scorer.model.version == f"churn-predictor:{second}"
    assert follower.check() == "unchanged"  # remembered, not loaded again


def test_an_unknown_alias_keeps_the_bento_model(settings: Settings) -> None:
    scorer = Scorer(Stored(), ChurnModel(small_booster(1), "churn-predictor:7"))
    follower = ModelFollower(
        scorer,
        settings.model_copy(
            update={"model": settings.model.model_copy(update={"alias": "challenger"})}
        ),
    )
    assert follower.check() == "unchanged"
    assert scorer.model.version == "churn-predictor:7"
