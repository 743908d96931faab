"""The composition root: what every door scores through, built once per process.

The service's workers, the standalone Kafka runner and the benchmark's
baseline all build the same thing the same way: the model from the Bento
store, the Feast online store, the `Scorer` over both and, for a door that
takes concurrent requests, the `MicroBatcher` in front of it. Building it
here, once, keeps the three from drifting apart (MLServer builds its data
plane once and hands it to every server in the same spirit).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from predictflow import metrics, runtime
from predictflow.batching import MicroBatcher
from predictflow.features import OnlineFeatures
from predictflow.model import ChurnModel
from predictflow.scoring import Scorer
from predictflow.settings import Settings


class BentoModelRef(Protocol):
    """A Bento store model, as `bentoml.models.get` or `BentoModel` give it."""

    @property
    def tag(self) -> object: ...

    def path_of(self, item: str) -> str: ...


@dataclass(frozen=True)
class ScoringCore:
    """The model, the online features and the scorer a process serves with."""

    model: ChurnModel
    features: OnlineFeatures
    scorer: Scorer

    def batcher(self, settings: Settings, source: str) -> MicroBatcher:
        """A micro-batcher in front of the scorer, tuned by `serving` settings."""
        serving = settings.serving
        return MicroBatcher(
            self.scorer,
            source=source,
            max_size=serving.micro_batch_max,
            timeout=serving.feature_timeout_seconds,
            max_queue=serving.max_queued_customers,
        )

    @staticmethod
    def settle() -> None:
        """Freeze start-up's objects out of the collector's way, and collect again.

        Call once everything the process keeps is loaded (after a Kafka
        runner is created, too): see `runtime.settle_heap`.
        """
        runtime.settle_heap()


def build_core(
    settings: Settings, model_ref: BentoModelRef | None = None
) -> ScoringCore:
    """Load the model (`model_ref`, else `serving.model_tag`) and open the features.

    Trims start-up imports first (`runtime.lean_imports`), and publishes the
    model version on `predictflow_model_info`. Garbage collection is held
    from here until the caller settles the core (`ScoringCore.settle`).
    """
    runtime.lean_imports()
    runtime.hold_collections()
    try:
        if model_ref is None:
            import bentoml

            model_ref = bentoml.models.get(settings.serving.model_tag)
        model = ChurnModel.from_mlflow_dir(
            Path(model_ref.path_of("mlflow_model")), str(model_ref.tag)
        )
        features = OnlineFeatures.open(settings.feast)
    except BaseException:
        runtime.release_collections()
        raise
    metrics.get().model_info.labels(model.version).set(1)
    return ScoringCore(model, features, Scorer(features, model))
