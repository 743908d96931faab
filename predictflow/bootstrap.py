"""`predictflow bootstrap`: data -> train -> register -> Feast -> Bento store.

Every step is safe to repeat and skips work already done: training (with its
cross-validation and evaluation plots) is skipped when a registered version was
trained on the same data with the same parameters, the Bento import when the
champion is already in the store.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from predictflow import bento_import, data, feature_repo, registry, training
from predictflow.logconfig import step
from predictflow.settings import Settings

log = logging.getLogger("predictflow.bootstrap")


@dataclass(frozen=True)
class BootstrapResult:
    """What bootstrap left in place."""

    champion_version: str
    champion_roc_auc: float
    trained: bool
    bento_tag: str
    customers: int


@dataclass(frozen=True)
class TrainResult:
    """A registered training run, and what it did to the champion."""

    version: str
    run_id: str
    metrics: dict[str, float]
    cv: training.CrossValidation
    promoted: bool
    #: The champion the candidate was compared against (None: there was none).
    previous: registry.Champion | None


def train_and_register(
    settings: Settings,
    params: training.XGBoostParams | None = None,
    *,
    baseline: bool = False,
) -> TrainResult:
    """Train, cross-validate, evaluate, log, register and maybe promote.

    The training step of bootstrap, and all of `predictflow train`. The
    evaluation (plots, deciles) is logged as the run's artifacts.
    """
    from predictflow import evaluation
    from predictflow.model import ChurnModel

    params = params or training.XGBoostParams()
    fingerprint = registry.training_fingerprint(data.TELCO_SHA256, params)
    with step("load_data", log):
        df = data.load_telco()
        split = training.split(df)
        log.info(
            "event=data_loaded rows=%d churners=%d train=%d test=%d",
            len(df),
            int(df[data.LABEL].sum()),
            len(split.y_train),
            len(split.y_test),
        )
    if baseline:
        with step("train_baseline", log):
            base = training.train_baseline(split)
            registry.log_baseline(settings, base)
            log.info("event=baseline_metrics %s", _kv(base.metrics))
    with step("train_xgboost", log):
        model = training.train_xgboost(split, params)
        log.info("event=xgboost_metrics seed=%d %s", params.seed, _kv(model.metrics))
    with step("cross_validate", log):
        cv = training.cross_validate(split, params)
        log.info(
            "event=cv_metrics folds=%d %s",
            len(cv.fold_roc_auc),
            _kv(cv.metrics()),
        )
    with tempfile.TemporaryDirectory(prefix="predictflow-eval-") as tmp:
        with step("evaluate", log):
            ev = evaluation.evaluate_model(
                ChurnModel(model.model, "candidate"), split, cv
            )
            evaluation.write(ev, Path(tmp))
        with step("register", log):
            version, run_id = registry.log_and_register(
                settings,
                model,
                fingerprint,
                data.TELCO_SHA256,
                cv=cv,
                evaluation_dir=Path(tmp),
            )
            promoted, previous = registry.promote_if_better(
                settings, version, model.metrics["roc_auc"]
            )
    return TrainResult(
        version=version,
        run_id=run_id,
        metrics=model.metrics,
        cv=cv,
        promoted=promoted,
        previous=previous,
    )


def train_if_needed(settings: Settings, *, force: bool = False) -> bool:
    """Train the default recipe unless it is already registered; returns whether.

    Skipped when a champion exists and some registered version was trained on
    the same data with the same parameters: the champion itself, or one it
    beat or that a person promoted past (`predictflow promote`). Otherwise
    every bootstrap after a `predictflow train --seed N` win would train and
    register the default recipe again.
    """
    params = training.XGBoostParams()
    fingerprint = registry.training_fingerprint(data.TELCO_SHA256, params)
    champion = registry.get_champion(settings)
    if champion is not None and not force:
        if champion.fingerprint == fingerprint:
            same = [champion.version]
        else:
            same = registry.versions_with_fingerprint(settings, fingerprint)
        if same:
            log.info(
                "step=train status=skipped reason=recipe_already_registered "
                "version=%s champion=%s champion_roc_auc=%.4f",
                same[-1],
                champion.version,
                champion.roc_auc,
            )
            return False
    train_and_register(settings, params, baseline=True)
    return True


def run(settings: Settings, *, force: bool = False) -> BootstrapResult:
    """Run every step; see the module docstring."""
    trained = train_if_needed(settings, force=force)
    champion = registry.get_champion(settings)
    assert champion is not None  # noqa: S101 - train_if_needed guarantees one
    with step("feast_apply_materialize", log):
        source = settings.feast.repo_path / feature_repo.SOURCE_PARQUET
        if force or not source.exists():
            feature_repo.write_source(data.load_telco(), settings.feast.repo_path)
        customers = feature_repo.apply_and_materialize(settings.feast)
        log.info(
            "event=materialized customers=%d online_store=%s",
            customers,
            settings.feast.online_store,
        )
    with step("bento_import", log):
        tag = bento_import.import_champion(settings)
    return BootstrapResult(
        champion_version=champion.version,
        champion_roc_auc=champion.roc_auc,
        trained=trained,
        bento_tag=tag,
        customers=customers,
    )


def _kv(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in values.items())
