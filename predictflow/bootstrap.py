"""`predictflow bootstrap`: data -> train -> register -> Feast -> Bento store.

Every step is safe to repeat and skips work already done: training is skipped
when the champion was trained on the same data with the same parameters, the
Bento import when the champion is already in the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from predictflow import data, features, registry, training
from predictflow.log import step
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


def train_if_needed(settings: Settings, *, force: bool = False) -> bool:
    """Train, log, register and maybe promote; returns whether it trained."""
    params = training.XGBoostParams()
    fingerprint = registry.training_fingerprint(data.TELCO_SHA256, params)
    champion = registry.get_champion(settings)
    if champion is not None and champion.fingerprint == fingerprint and not force:
        log.info(
            "step=train status=skipped reason=champion_up_to_date version=%s "
            "roc_auc=%.4f",
            champion.version,
            champion.roc_auc,
        )
        return False
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
    with step("train_baseline", log):
        baseline = training.train_baseline(split)
        registry.log_baseline(settings, baseline)
        log.info("event=baseline_metrics %s", _kv(baseline.metrics))
    with step("train_xgboost", log):
        model = training.train_xgboost(split, params)
        log.info("event=xgboost_metrics %s", _kv(model.metrics))
    with step("register", log):
        version, _ = registry.log_and_register(
            settings, model, fingerprint, data.TELCO_SHA256
        )
        registry.promote_if_better(settings, version, model.metrics["roc_auc"])
    return True


def run(settings: Settings, *, force: bool = False) -> BootstrapResult:
    """Run every step; see the module docstring."""
    trained = train_if_needed(settings, force=force)
    champion = registry.get_champion(settings)
    assert champion is not None  # noqa: S101 - train_if_needed guarantees one
    with step("feast_apply_materialize", log):
        source = settings.feast.repo_path / features.SOURCE_PARQUET
        if force or not source.exists():
            features.write_source(data.load_telco(), settings.feast.repo_path)
        customers = features.apply_and_materialize(settings.feast)
        log.info(
            "event=materialized customers=%d online_store=%s",
            customers,
            settings.feast.online_store,
        )
    with step("bento_import", log):
        tag = registry.import_champion(settings)
    return BootstrapResult(
        champion_version=champion.version,
        champion_roc_auc=champion.roc_auc,
        trained=trained,
        bento_tag=tag,
        customers=customers,
    )


def _kv(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in values.items())
