"""The Bento store side of the registry: the champion imported for `bentoml serve`."""

from __future__ import annotations

import logging
from typing import Any

from predictflow.encoding import ENCODED_FEATURES
from predictflow.registry import client, get_champion
from predictflow.settings import Settings

log = logging.getLogger(__name__)


def bento_tag(settings: Settings, version: str) -> str:
    """Bento store tag of a registered MLflow version."""
    return f"{settings.mlflow.model_name}:{version}"


def import_champion(settings: Settings) -> str:
    """Import the champion into the Bento store (once); returns its Bento tag."""
    import bentoml
    from bentoml.exceptions import NotFound

    champion = get_champion(settings)
    if champion is None:
        raise LookupError(
            f"no {settings.mlflow.model_name}@{settings.mlflow.champion_alias} "
            "to import: train first"
        )
    tag = bento_tag(settings, champion.version)
    try:
        bentoml.models.get(tag)
        log.info("event=bento_import_skipped tag=%s reason=already_imported", tag)
        return tag
    except NotFound:
        pass
    run = client(settings).get_run(champion.run_id)
    metrics: dict[str, Any] = dict(run.data.metrics)
    bentoml.mlflow.import_model(
        tag,
        model_uri=f"models:/{settings.mlflow.model_name}/{champion.version}",
        labels={
            "mlflow_model": settings.mlflow.model_name,
            "mlflow_version": champion.version,
            "mlflow_run_id": champion.run_id,
            "roc_auc": f"{champion.roc_auc:.4f}",
        },
        metadata={
            "metrics": metrics,
            "encoded_features": list(ENCODED_FEATURES),
            "tracking_uri": settings.tracking_uri,
        },
    )
    log.info("event=bento_imported tag=%s", tag)
    return tag
