"""Register small real models in an MLflow registry, for the model-lifecycle tests."""

from __future__ import annotations

import numpy as np
import xgboost as xgb

from predictflow.data import LABEL, synthetic_customers
from predictflow.encoding import ENCODED_FEATURES, FEATURES, encode_columns
from predictflow.settings import Settings


def small_booster(seed: int, drop: str | None = None) -> xgb.Booster:
    """A real booster trained in a second (without the `drop` column, if given)."""
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


def register(settings: Settings, booster: xgb.Booster, alias: str) -> str:
    """Log and register `booster` (with its signature), point `alias` at it."""
    import mlflow
    import mlflow.xgboost
    import pandas as pd
    from mlflow.models import infer_signature

    from predictflow.registry import ensure_experiment

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
    set_alias(settings, alias, str(mv.version))
    return str(mv.version)


def set_alias(settings: Settings, alias: str, version: str) -> None:
    """Point `alias` at `version`."""
    from predictflow.registry import client

    client(settings).set_registered_model_alias(
        settings.mlflow.model_name, alias, version
    )


def stage_a_swap(data_dir: str, alias: str, seed: int) -> tuple[Settings, str, str]:
    """Point `alias` at the champion and register a new version to move it to.

    Returns the registry's settings, the champion's version and the new one;
    moving the alias (`set_alias`) is then instant, for a test to do mid-load.
    """
    from pathlib import Path

    from predictflow.registry import get_champion

    # Named, not inherited: MLflow's set_tracking_uri (another test's
    # registry) also sets MLFLOW_TRACKING_URI for this process.
    uri = f"sqlite:///{(Path(data_dir) / 'mlflow.db').resolve()}"
    settings = Settings(data_dir=Path(data_dir), mlflow={"tracking_uri": uri})
    champion = get_champion(settings)
    if champion is None:
        raise LookupError("no champion: bootstrap the workspace first")
    set_alias(settings, alias, champion.version)
    new = register(settings, small_booster(seed), f"{alias}-next")
    return settings, champion.version, new
