"""The PredictFlow churn-scoring service (BentoML).

Thin on purpose: requests are validated by the contract, scored by
`predictflow.scoring.Scorer` through a `MicroBatcher` (concurrent requests
share a feature read and a model call, on a thread of the batcher's own, so
the event loop never waits on the feature store), built once by
`predictflow.serving.build_core`. `rest.door.RestDoor`, in front of every
route, holds the limits, tokens, logs, error mapping and the `/predict` fast
path; the Kafka runner (`consumers.runner`) scores through the same scorer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from typing import Any

import bentoml

from consumers.runner import KafkaRunner
from predictflow.batching import MicroBatcher
from predictflow.contract import (
    ChurnBatchRequest,
    ChurnBatchResponse,
    ChurnRequest,
    ChurnScore,
)
from predictflow.errors import BatchTooLarge, PredictFlowError
from predictflow.lifecycle import ModelFollower
from predictflow.serving import build_core
from predictflow.settings import get_settings
from rest.answers import error_response, score_one
from rest.bentoml_fit import BENTOML_HANDLER_LOGGER, QuietClientErrors
from rest.door import RestDoor

log = logging.getLogger("predictflow.service")

#: Longest a readiness probe waits for the feature store: under the 2 s
#: timeout of the probes in k8s/, so a stalled store is a clear 503.
READINESS_CHECK_SECONDS = 1.5

_SETTINGS = get_settings()
#: BentoML service config that keeps the scoring routes out of tracing.
_UNTRACED = {"tracing": {"excluded_urls": ["/predict"]}}


def _service_batcher() -> MicroBatcher:
    service: ChurnPredictor = bentoml.get_current_service()
    return service.batcher


def _service_openapi() -> Mapping[str, Any]:
    spec: Mapping[str, Any] = ChurnPredictor.openapi_spec.asdict()  # type: ignore[attr-defined]
    return spec


@bentoml.service(
    name="churn-predictor",
    workers=_SETTINGS.serving.workers,
    traffic={"timeout": 10},
    logging={"access": {"enabled": False}},
    # OpenTelemetry's ASGI middleware opens spans even with no exporter: a
    # sixth of a request's CPU. Tracing is opt-in for the scoring routes.
    **({} if _SETTINGS.serving.trace_scoring else _UNTRACED),
)
class ChurnPredictor:
    """Scores customer churn risk from Feast features and the MLflow champion."""

    # Declared at class scope so that `bentoml build` packs the model. The tag,
    # like the service config above (workers, tracing) and the fast path, is
    # read at import: BentoML resolves models and config before the workers
    # start, so they cannot wait for __init__.
    model_ref = bentoml.models.BentoModel(_SETTINGS.serving.model_tag)

    def __init__(self) -> None:
        settings = get_settings()
        self.settings = settings
        core = build_core(settings, self.model_ref)
        model = core.model
        self.core = core
        self.features = core.features
        self.scorer = core.scorer
        self.batcher = core.batcher(settings, source="rest")
        self._ready: bool | None = None
        self._probe: asyncio.Future[None] | None = None
        self.kafka: KafkaRunner | None = None
        self._kafka_task: asyncio.Task[None] | None = None
        # BentoML's logging config leaves the root at WARNING: without a level
        # of their own, our INFO events (a 4xx answer, ready again) are lost.
        logging.getLogger("predictflow").setLevel(settings.log_level.upper())
        logger = logging.getLogger(BENTOML_HANDLER_LOGGER)
        if not any(isinstance(f, QuietClientErrors) for f in logger.filters):
            logger.addFilter(QuietClientErrors())
        self._stopping = asyncio.Event()
        self._following: asyncio.Task[None] | None = None
        log.info(
            "event=service_loaded model_version=%s online_store=%s",
            model.version,
            settings.feast.online_store,
        )
        if settings.auth.tokens_file is None:
            log.warning(
                "event=serving_open: no PREDICTFLOW_AUTH__TOKENS_FILE, anyone who "
                "reaches this port can score (refused when PREDICTFLOW_ENV=production)"
            )

    @bentoml.on_startup
    async def start_kafka_runner(self) -> None:
        """Start this worker's Kafka consumer when a broker is configured.

        Then settle the garbage collector: everything loaded so far lives as
        long as the worker, so it is frozen out of collections.
        """
        kafka = self.settings.kafka
        if kafka.bootstrap_servers:
            from bentoml import server_context

            instance = kafka.instance_id or socket.gethostname()
            self.kafka = KafkaRunner(
                self.scorer,
                kafka,
                instance=f"{instance}-w{server_context.worker_index}",
            )
            # Held so the task is not garbage-collected while it runs.
            self._kafka_task = asyncio.create_task(self.kafka.serve())
        # Both doors share the scorer: a new version of the alias reaches both.
        self._following = asyncio.create_task(
            ModelFollower(self.scorer, self.settings).run(self._stopping)
        )
        self.core.settle()

    @bentoml.on_shutdown
    async def stop_kafka_runner(self) -> None:
        """Finish the poll in hand, commit, leave the group; stop the scoring thread."""
        self._stopping.set()
        if self.kafka is not None:
            await self.kafka.stop()
        self.batcher.close()

    async def __is_ready__(self) -> bool:
        """Ready while the feature store answers a read within the probe's bound.

        Asked again on every probe (an outage makes the worker unready, and
        ready again once the store answers). At most one read is in flight: a
        probe during a stalled read waits on that one.
        """
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(asyncio.to_thread(self.features.check))
        try:
            # Bounded: a probe must answer within its own timeout.
            await asyncio.wait_for(asyncio.shield(self._probe), READINESS_CHECK_SECONDS)
        except (PredictFlowError, TimeoutError) as exc:
            if self._ready is not False:
                log.warning("event=not_ready reason=%r", exc)
            self._ready = False
            return False
        if self._ready is not True:
            log.info("event=ready")
        self._ready = True
        return True

    @bentoml.api
    async def predict(self, request: ChurnRequest, /) -> ChurnScore:
        """Churn probability of one customer."""
        return await score_one(self.batcher, request)  # type: ignore[return-value]

    @bentoml.api
    async def predict_batch(self, batch: ChurnBatchRequest, /) -> ChurnBatchResponse:
        """Churn probabilities of many customers, in request order."""
        limit = self.settings.serving.max_batch_size
        try:
            if len(batch.requests) > limit:
                raise BatchTooLarge(
                    f"{len(batch.requests)} requests in one batch; the limit is {limit}"
                )
            results = await self.batcher.score_many(batch.requests)
        except PredictFlowError as exc:
            return error_response(exc.to_reply())  # type: ignore[return-value]
        return ChurnBatchResponse(results=results)


# At run time ChurnPredictor is a bentoml Service; its stubs say the class.
ChurnPredictor.add_asgi_middleware(  # type: ignore[attr-defined]
    RestDoor, batcher=_service_batcher, openapi=_service_openapi
)
