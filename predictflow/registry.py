"""MLflow tracking and registry, and the import of the champion into the Bento store.

The `champion` alias moves by itself only when a candidate's held-out ROC AUC is
at least the current champion's; `set_alias` moves any alias by hand. The Bento
store holds `churn-predictor:<mlflow version>`
with the MLflow version, run id and metrics as labels, so every reply can name
the model that produced it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from predictflow.encoding import ENCODED_FEATURES
from predictflow.settings import Settings
from predictflow.training import CrossValidation, TrainedModel, XGBoostParams

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

#: MLflow run tag holding the fingerprint of the training inputs.
FINGERPRINT_TAG = "predictflow.fingerprint"


@dataclass(frozen=True)
class Champion:
    """The registered version the `champion` alias points at."""

    version: str
    run_id: str
    roc_auc: float
    fingerprint: str | None


@dataclass(frozen=True)
class VersionInfo:
    """One registered version: its aliases, its run and the run's metrics."""

    version: str
    aliases: tuple[str, ...]
    run_id: str
    created: datetime
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]

    @property
    def roc_auc(self) -> float | None:
        """Held-out ROC AUC, as the champion rule compares it."""
        return self.metrics.get("test_roc_auc")

    def as_json(self) -> dict[str, Any]:
        """The `predictflow models --json` object."""
        return {
            "version": self.version,
            "aliases": list(self.aliases),
            "roc_auc": self.roc_auc,
            "cv_roc_auc_mean": self.metrics.get("cv_roc_auc_mean"),
            "cv_roc_auc_std": self.metrics.get("cv_roc_auc_std"),
            "created": self.created.isoformat(timespec="seconds"),
            "run_id": self.run_id,
            "seed": int(self.params["seed"]) if "seed" in self.params else None,
        }


class UnknownVersion(LookupError):
    """The registered model has no such version."""


def training_fingerprint(data_sha256: str, params: XGBoostParams) -> str:
    """A digest of everything that determines a trained model."""
    payload = json.dumps(
        {"data": data_sha256, "params": asdict(params), "features": ENCODED_FEATURES},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def client(settings: Settings) -> MlflowClient:
    """An MLflow client on the configured tracking store."""
    import mlflow

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return mlflow.MlflowClient(settings.tracking_uri, settings.tracking_uri)


def ensure_experiment(settings: Settings) -> str:
    """The experiment id; a local store keeps artifacts under the data directory."""
    import mlflow

    c = client(settings)
    found = c.get_experiment_by_name(settings.mlflow.experiment)
    if found is not None:
        exp_id = str(found.experiment_id)
    else:
        location = None
        if settings.tracking_uri.startswith("sqlite:"):
            location = settings.artifact_root.as_uri()
        exp_id = c.create_experiment(
            settings.mlflow.experiment, artifact_location=location
        )
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def get_champion(settings: Settings) -> Champion | None:
    """The current champion, or None when no version holds the alias."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    try:
        model = c.get_registered_model(settings.mlflow.model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = model.aliases.get(settings.mlflow.champion_alias)
    if version is None:
        return None
    mv = c.get_model_version(settings.mlflow.model_name, str(version))
    if mv.run_id is None:
        raise LookupError(f"{settings.mlflow.model_name}/{version} has no run")
    run = c.get_run(mv.run_id)
    return Champion(
        version=str(mv.version),
        run_id=str(mv.run_id),
        roc_auc=float(run.data.metrics["test_roc_auc"]),
        fingerprint=run.data.tags.get(FINGERPRINT_TAG),
    )


def log_baseline(settings: Settings, trained: TrainedModel) -> str:
    """Log the baseline run (not registered); returns the run id."""
    import mlflow
    import mlflow.sklearn

    ensure_experiment(settings)
    with mlflow.start_run(run_name="baseline-logreg") as run:
        mlflow.set_tag("model_kind", trained.kind)
        mlflow.log_params(trained.params)
        mlflow.log_metrics({f"test_{k}": v for k, v in trained.metrics.items()})
        mlflow.sklearn.log_model(trained.model, name="model")
        return str(run.info.run_id)


def log_and_register(
    settings: Settings,
    trained: TrainedModel,
    fingerprint: str,
    data_sha256: str,
    *,
    cv: CrossValidation | None = None,
    evaluation_dir: Path | None = None,
) -> tuple[str, str]:
    """Log the XGBoost run and register its model; returns (version, run id).

    `cv` adds the metrics `cv_roc_auc_mean` and `cv_roc_auc_std`; the files in
    `evaluation_dir` become the run's artifacts under `evaluation/`.
    """
    import mlflow
    import mlflow.xgboost
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    from predictflow.evaluation import ARTIFACT_PATH

    ensure_experiment(settings)
    example = pd.DataFrame(
        np.zeros((1, len(ENCODED_FEATURES)), dtype=np.float32),
        columns=list(ENCODED_FEATURES),
    )
    signature = infer_signature(example, np.zeros(1, dtype=np.float32))
    with mlflow.start_run(run_name="xgboost") as run:
        mlflow.set_tags(
            {
                "model_kind": trained.kind,
                FINGERPRINT_TAG: fingerprint,
                "data_sha256": data_sha256,
            }
        )
        mlflow.log_params(trained.params)
        mlflow.log_metrics({f"test_{k}": v for k, v in trained.metrics.items()})
        if cv is not None:
            mlflow.log_metrics(cv.metrics())
        if evaluation_dir is not None:
            mlflow.log_artifacts(str(evaluation_dir), artifact_path=ARTIFACT_PATH)
        info = mlflow.xgboost.log_model(
            trained.model, name="model", signature=signature, model_format="ubj"
        )
        mv = mlflow.register_model(info.model_uri, settings.mlflow.model_name)
        return str(mv.version), str(run.info.run_id)


def promote_if_better(
    settings: Settings, version: str, roc_auc: float
) -> tuple[bool, Champion | None]:
    """Move the champion alias to `version` if its ROC AUC is at least the champion's.

    Returns whether it moved, and the champion it was compared against.
    """
    current = get_champion(settings)
    if current is not None and roc_auc < current.roc_auc:
        log.info(
            "event=champion_kept champion=%s champion_auc=%.4f "
            "candidate=%s candidate_auc=%.4f",
            current.version,
            current.roc_auc,
            version,
            roc_auc,
        )
        return False, current
    client(settings).set_registered_model_alias(
        settings.mlflow.model_name, settings.mlflow.champion_alias, version
    )
    log.info("event=champion_moved version=%s roc_auc=%.4f", version, roc_auc)
    return True, current


def versions_with_fingerprint(settings: Settings, fingerprint: str) -> list[str]:
    """Registered versions trained with this fingerprint, oldest first."""
    c = client(settings)
    experiment = c.get_experiment_by_name(settings.mlflow.experiment)
    if experiment is None:
        return []
    runs = c.search_runs(
        [str(experiment.experiment_id)],
        filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}'",
    )
    run_ids = {str(run.info.run_id) for run in runs}
    if not run_ids:
        return []
    found = [
        mv
        for mv in _model_versions(settings)
        if mv.run_id is not None and str(mv.run_id) in run_ids
    ]
    return [str(mv.version) for mv in found]


def list_versions(settings: Settings) -> list[VersionInfo]:
    """Every registered version, oldest first (empty before the first training)."""
    c = client(settings)
    aliases = _aliases_by_version(settings)
    return [_info(c, mv, aliases) for mv in _model_versions(settings)]


def get_version(settings: Settings, version: str | None = None) -> VersionInfo:
    """One registered version; None means the champion.

    Raises `UnknownVersion` when there is no such version (or no champion).
    """
    from mlflow.exceptions import MlflowException

    name = settings.mlflow.model_name
    aliases = _aliases_by_version(settings)
    if version is None:
        champion = settings.mlflow.champion_alias
        held = [v for v, names in aliases.items() if champion in names]
        if not held:
            raise UnknownVersion(f"no {name}@{champion}: train first")
        version = held[0]
    c = client(settings)
    try:
        mv = c.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        known = ", ".join(str(m.version) for m in _model_versions(settings)) or "none"
        raise UnknownVersion(
            f"{name} has no version {version!r} (versions: {known})"
        ) from None
    return _info(c, mv, aliases)


def alias_version(settings: Settings, alias: str) -> str | None:
    """The version `alias` points at, or None when no version holds it."""
    held = _aliases_by_version(settings).items()
    return next((v for v, names in held if alias in names), None)


def set_alias(settings: Settings, version: str, alias: str) -> str | None:
    """Point `alias` at an existing `version`; returns the version it left.

    Raises `UnknownVersion` (and moves nothing) when the version does not exist.
    """
    target = get_version(settings, version)
    previous = alias_version(settings, alias)
    client(settings).set_registered_model_alias(
        settings.mlflow.model_name, alias, target.version
    )
    log.info(
        "event=alias_moved alias=%s version=%s previous=%s",
        alias,
        target.version,
        previous,
    )
    return previous


def download_evaluation(settings: Settings, run_id: str, dst: Path) -> bool:
    """Download a run's `evaluation/` artifacts into `dst`; False when it has none."""
    import mlflow.artifacts

    from predictflow.evaluation import ARTIFACT_PATH

    if not client(settings).list_artifacts(run_id, ARTIFACT_PATH):
        return False
    dst.mkdir(parents=True, exist_ok=True)
    mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path=ARTIFACT_PATH,
        dst_path=str(dst),
        tracking_uri=settings.tracking_uri,
    )
    return True


def download_model(settings: Settings, version: str, dst: Path) -> Path:
    """Download a registered version's MLflow model directory; returns its path."""
    import mlflow.artifacts

    client(settings)
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{settings.mlflow.model_name}/{version}",
            dst_path=str(dst),
            tracking_uri=settings.tracking_uri,
            registry_uri=settings.tracking_uri,
        )
    )


def _model_versions(settings: Settings) -> list[Any]:
    name = settings.mlflow.model_name.replace("'", "''")
    found = client(settings).search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda mv: int(mv.version))


def _aliases_by_version(settings: Settings) -> dict[str, tuple[str, ...]]:
    from mlflow.exceptions import MlflowException

    try:
        model = client(settings).get_registered_model(settings.mlflow.model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    out: dict[str, list[str]] = {}
    for alias, version in sorted(model.aliases.items()):
        out.setdefault(str(version), []).append(alias)
    return {v: tuple(names) for v, names in out.items()}


def _info(c: MlflowClient, mv: Any, aliases: dict[str, tuple[str, ...]]) -> VersionInfo:
    run = c.get_run(mv.run_id) if mv.run_id else None
    return VersionInfo(
        version=str(mv.version),
        aliases=aliases.get(str(mv.version), ()),
        run_id=str(mv.run_id or ""),
        created=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC),
        metrics=dict(run.data.metrics) if run else {},
        params=dict(run.data.params) if run else {},
        tags=dict(run.data.tags) if run else {},
    )
