"""Follow an MLflow alias: load a new version off the loop, check it, swap it in.

Each serving process (a BentoML worker, the standalone Kafka runner) starts on
the model in its Bento store, as it always did: no registry is needed to serve.
When `model.refresh_seconds` > 0 it then asks the registry, at that interval,
which version `model.alias` names (`champion` for stable pods, `challenger`
for canary pods). A new version is downloaded and loaded in a thread, then
validated: the booster's input columns and the MLflow signature must be the
contract's encoded features, and it must score a fixed reference set of
customers with finite probabilities in [0, 1]. Only then is it swapped into
the `Scorer` (one attribute assignment: a batch or poll in flight finishes
on the model it started with, and every score names the version that made
it). A version that fails is refused, remembered (not retried) and counted in
`predictflow_model_reload_total{outcome}`; the old model keeps serving. A
registry that does not answer is logged once, and asked again next interval.

Against an MLflow server the question goes over its REST API
(`registry_rest`): importing the MLflow client would stall the process for
about 1.8 s of CPU. Only a moved alias imports it, to download the version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from predictflow import metrics, registry_rest, runtime
from predictflow.encoding import ENCODED_FEATURES, FEATURES, encode_columns
from predictflow.errors import ModelUnavailable
from predictflow.model import ChurnModel
from predictflow.scoring import Scorer
from predictflow.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger("predictflow.lifecycle")

#: Customers every candidate must score sensibly before it serves.
REFERENCE_CUSTOMERS = 64

#: How long one question to an MLflow server may take (it runs in a thread;
#: a registry that takes longer counts as unreachable until next interval).
REGISTRY_TIMEOUT_S = 10.0


class ModelRefused(ModelUnavailable):
    """A registered version that must not serve (wrong inputs or nonsense scores)."""


def reference_rows() -> Any:
    """A fixed, seeded set of encoded customers (same every call)."""
    from predictflow.data import synthetic_customers

    frame = synthetic_customers(REFERENCE_CUSTOMERS, seed=20_261_130)
    return encode_columns({name: frame[name].tolist() for name in FEATURES})


def validate(model: ChurnModel, model_dir: Path) -> None:
    """Refuse a model whose inputs are not the contract's, or whose scores are not."""
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    inputs = (mlmodel.get("signature") or {}).get("inputs")
    if inputs:
        import json

        names = tuple(column.get("name") for column in json.loads(inputs))
        if names != ENCODED_FEATURES:
            raise ModelRefused(
                f"{model.version}: its signature has {len(names)} inputs, not the "
                f"contract's {len(ENCODED_FEATURES)} encoded features"
            )
    scores = model.predict(reference_rows())
    bad = [p for p in scores.tolist() if not (math.isfinite(p) and 0.0 <= p <= 1.0)]
    if len(scores) != REFERENCE_CUSTOMERS or bad:
        raise ModelRefused(
            f"{model.version}: {len(bad)} of the reference customers got no "
            "probability in [0, 1]"
        )


class ModelFollower:
    """Keeps one `Scorer` on the version an MLflow alias names."""

    def __init__(self, scorer: Scorer, settings: Settings) -> None:
        self.scorer = scorer
        self.settings = settings
        self.name = settings.mlflow.model_name
        self.alias = settings.model.alias
        self._refused: set[str] = set()
        self._rest: registry_rest.AliasClient | None = None
        self._reachable = True
        #: The registry has answered once (logged, so operators and tests
        #: see the follower at work).
        self._followed = False

    @property
    def serving(self) -> str:
        """The registered version the scorer serves (the part after `name:`)."""
        return self.scorer.model.version.rpartition(":")[2]

    def check(self) -> str:
        """Ask the registry once and swap if the alias moved; returns the outcome.

        Blocking (MLflow client, download, load): run it in a thread.
        """
        try:
            version = self._alias_version()
        except Exception as exc:  # noqa: BLE001 - a registry outage is not ours to raise
            if self._reachable:
                log.warning(
                    "event=registry_unreachable alias=%s error=%s: serving %s",
                    self.alias,
                    type(exc).__name__,
                    self.scorer.model.version,
                )
            self._reachable = False
            return "unreachable"
        if not self._reachable or not self._followed:
            log.info(
                "event=following alias=%s version=%s serving=%s",
                self.alias,
                version,
                self.scorer.model.version,
            )
            self._reachable = self._followed = True
        if version is None or version == self.serving or version in self._refused:
            return "unchanged"
        return self._swap(version)

    def _alias_version(self) -> str | None:
        uri = self.settings.tracking_uri
        if registry_rest.speaks_rest(uri):
            if self._rest is None:
                self._rest = registry_rest.AliasClient(uri, timeout=REGISTRY_TIMEOUT_S)
            return self._rest.version(self.name, self.alias)
        mlflow_client = self._mlflow()
        from mlflow.exceptions import MlflowException

        try:
            mv = mlflow_client.get_model_version_by_alias(self.name, self.alias)
        except MlflowException as exc:
            if exc.error_code in registry_rest.NOT_THERE:
                return None  # no such alias (yet): keep serving
            raise
        return str(mv.version)

    def _mlflow(self) -> MlflowClient:
        """The MLflow client (imported on first use), quiet for a serving log.

        It also sets the registry that `models:/` URIs resolve against.
        """
        # A serving log is no place for progress bars or a dependency's
        # deprecation notices.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        warnings.filterwarnings("ignore", message=".*noload.* loader strategy")
        from predictflow.registry import client

        return client(self.settings)

    def _swap(self, version: str) -> str:
        old = self.scorer.model.version
        try:
            model_dir = self._download(version)
            model = ChurnModel.from_mlflow_dir(model_dir, f"{self.name}:{version}")
            validate(model, model_dir)
        except Exception as exc:  # noqa: BLE001 - the old model keeps serving
            refused = isinstance(exc, ModelUnavailable)
            outcome = "refused" if refused else "failed"
            if refused:
                self._refused.add(version)
            metrics.get().model_reloads.labels(outcome).inc()
            log.error(
                "event=model_%s alias=%s version=%s serving=%s error=%s: %s",
                outcome,
                self.alias,
                version,
                old,
                type(exc).__name__,
                str(exc)[:500],
            )
            return outcome
        self.scorer.model = model
        m = metrics.get()
        m.model_reloads.labels("swapped").inc()
        m.model_info.labels(old).set(0)
        m.model_info.labels(model.version).set(1)
        log.info(
            "event=model_swapped alias=%s from=%s to=%s", self.alias, old, model.version
        )
        return "swapped"

    def _download(self, version: str) -> Path:
        self._mlflow()
        import mlflow.artifacts

        target = self.settings.data_dir / "models" / self.name / version
        if (target / "MLmodel").is_file():
            return target
        target.mkdir(parents=True, exist_ok=True)
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{self.name}/{version}", dst_path=str(target)
        )
        return Path(path)

    async def run(self, stop: asyncio.Event) -> None:
        """Check every `refresh_seconds` until `stop` is set (0: never)."""
        every = self.settings.model.refresh_seconds
        if every <= 0:
            return
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every)
                if stop.is_set():
                    return
                had_mlflow = "mlflow" in sys.modules
                await asyncio.to_thread(self.check)
                if not had_mlflow and "mlflow" in sys.modules:
                    # This check imported the MLflow client: freeze it too.
                    runtime.resettle_heap()
        finally:
            if self._rest is not None:
                self._rest.close()
