"""The PredictFlow churn-scoring service (BentoML).

Thin on purpose: requests are validated by the contract, scored by
`predictflow.scoring.Scorer`, and errors mapped to HTTP in `_error_response`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import bentoml
from starlette.responses import JSONResponse

from consumers.runner import KafkaRunner
from predictflow import metrics
from predictflow.contract import (
    ChurnBatchRequest,
    ChurnBatchResponse,
    ChurnRequest,
    ChurnScore,
    ErrorReply,
)
from predictflow.errors import BatchTooLarge, PredictFlowError, http_status
from predictflow.features import OnlineFeatures
from predictflow.model import ChurnModel
from predictflow.scoring import Scorer
from predictflow.settings import get_settings

log = logging.getLogger("predictflow.service")

#: Longest a readiness probe waits for the feature store.
READINESS_CHECK_SECONDS = 3.0


def _error_response(reply: ErrorReply) -> JSONResponse:
    return JSONResponse(reply.model_dump(), status_code=http_status(reply.error))


@bentoml.service(
    name="churn-predictor",
    traffic={"timeout": 10},
    logging={"access": {"enabled": False}},
)
class ChurnPredictor:
    """Scores customer churn risk from Feast features and the MLflow champion."""

    # Declared at class scope so that `bentoml build` packs the model. The tag
    # is the one setting read at import: BentoML resolves models before the
    # workers start, so it cannot wait for __init__.
    model_ref = bentoml.models.BentoModel(get_settings().serving.model_tag)

    def __init__(self) -> None:
        settings = get_settings()
        self.settings = settings
        model = ChurnModel.from_mlflow_dir(
            Path(self.model_ref.path_of("mlflow_model")), str(self.model_ref.tag)
        )
        self.features = OnlineFeatures.open(settings.feast)
        self.scorer = Scorer(self.features, model)
        self._ready = False
        self.kafka: KafkaRunner | None = None
        self._kafka_task: asyncio.Task[None] | None = None
        metrics.get().model_info.labels(model.version).set(1)
        log.info(
            "event=service_loaded model_version=%s online_store=%s",
            model.version,
            settings.feast.online_store,
        )

    @bentoml.on_startup
    async def start_kafka_runner(self) -> None:
        """Start this worker's Kafka consumer when a broker is configured."""
        kafka = self.settings.kafka
        if not kafka.bootstrap_servers:
            return
        from bentoml import server_context

        instance = kafka.instance_id or socket.gethostname()
        self.kafka = KafkaRunner(
            self.scorer, kafka, instance=f"{instance}-w{server_context.worker_index}"
        )
        # Held so the task is not garbage-collected while it runs.
        self._kafka_task = asyncio.create_task(self.kafka.serve())

    @bentoml.on_shutdown
    async def stop_kafka_runner(self) -> None:
        """Finish the poll in hand, commit, leave the group."""
        if self.kafka is not None:
            await self.kafka.stop()

    async def __is_ready__(self) -> bool:
        """Ready once the model is loaded and the feature store has answered."""
        if not self._ready:
            try:
                # Bounded: a probe must answer within its own timeout.
                async with asyncio.timeout(READINESS_CHECK_SECONDS):
                    await asyncio.to_thread(self.features.check)
            except (PredictFlowError, TimeoutError) as exc:
                log.warning("event=not_ready reason=%r", exc)
                return False
            self._ready = True
        return True

    @bentoml.api
    async def predict(self, request: ChurnRequest, /) -> ChurnScore:
        """Churn probability of one customer."""
        try:
            (result,) = self.scorer.score([request], source="rest")
        except PredictFlowError as exc:
            return _error_response(exc.to_reply())  # type: ignore[return-value]
        if isinstance(result, ErrorReply):
            return _error_response(result)  # type: ignore[return-value]
        return result

    @bentoml.api
    async def predict_batch(self, batch: ChurnBatchRequest, /) -> ChurnBatchResponse:
        """Churn probabilities of many customers, in request order."""
        limit = self.settings.serving.max_batch_size
        try:
            if len(batch.requests) > limit:
                raise BatchTooLarge(
                    f"{len(batch.requests)} requests in one batch; the limit is {limit}"
                )
            results = self.scorer.score(batch.requests, source="rest")
        except PredictFlowError as exc:
            return _error_response(exc.to_reply())  # type: ignore[return-value]
        return ChurnBatchResponse(results=results)
