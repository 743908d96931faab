"""The PredictFlow churn-scoring service (BentoML).

Thin on purpose: requests are validated by the contract, scored by
`predictflow.scoring.Scorer` (single requests through a `MicroBatcher`, so
concurrent ones share a feature read and a model call), and errors mapped to
HTTP in `_error_response`.

`POST /predict` is the hot path. With `serving.fast_path` on (the default) it
is answered by `FastPredict`, an ASGI middleware added with BentoML's
`add_asgi_middleware`: it sits inside BentoML's metrics, tracing, timeout and
concurrency middlewares but skips the per-request API machinery (router, IO
descriptors, context), which costs more CPU than the scoring itself. The
`predict` API below stays the declared contract (schema, OpenAPI, BentoML
clients) and answers the same way when the fast path is off. See README,
"Performance".
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import bentoml
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consumers.runner import KafkaRunner
from predictflow import metrics, runtime
from predictflow.batching import MicroBatcher
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
#: Largest /predict body the fast path reads (a full request is ~1 KB).
MAX_BODY_BYTES = 64 * 1024

_SETTINGS = get_settings()
#: BentoML service config that keeps the scoring routes out of tracing.
_UNTRACED = {"tracing": {"excluded_urls": ["/predict"]}}


def _error_response(reply: ErrorReply) -> JSONResponse:
    return JSONResponse(reply.model_dump(), status_code=http_status(reply.error))


def _invalid_response(exc: ValidationError) -> JSONResponse:
    # The shape BentoML gives a request that fails its Pydantic model.
    return JSONResponse(
        {
            "error": f"{exc.error_count()} validation error for {exc.title}",
            "detail": exc.errors(include_context=False, include_input=False),
        },
        status_code=400,
    )


async def _score_one(batcher: MicroBatcher, request: ChurnRequest) -> Response:
    try:
        result = await batcher.score(request)
    except PredictFlowError as exc:
        return _error_response(exc.to_reply())
    if isinstance(result, ErrorReply):
        return _error_response(result)
    return Response(result.model_dump_json(), media_type="application/json")


class FastPredict:
    """ASGI middleware answering `POST /predict` without BentoML's API handler.

    Same contract as the `predict` API: the body is validated by
    `ChurnRequest`, a failure is a 400 with BentoML's error shape, and errors
    map to HTTP in `_error_response`. Anything else (other paths, other
    methods, a non-JSON content type) goes on to BentoML unchanged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != "/predict"
            or scope["method"] != "POST"
            or not _json_content(scope)
        ):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            response: Response = JSONResponse(
                {"error": f"request body over {MAX_BODY_BYTES} bytes"},
                status_code=413,
            )
        else:
            service: ChurnPredictor = bentoml.get_current_service()
            try:
                request = ChurnRequest.model_validate_json(body)
            except ValidationError as exc:
                response = _invalid_response(exc)
            else:
                response = await _score_one(service.batcher, request)
        await response(scope, receive, send)


def _json_content(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return b"json" in value
    return True


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None past MAX_BODY_BYTES."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


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
        runtime.lean_imports()
        settings = get_settings()
        self.settings = settings
        model = ChurnModel.from_mlflow_dir(
            Path(self.model_ref.path_of("mlflow_model")), str(self.model_ref.tag)
        )
        self.features = OnlineFeatures.open(settings.feast)
        self.scorer = Scorer(self.features, model)
        self.batcher = MicroBatcher(
            self.scorer, source="rest", max_size=settings.serving.micro_batch_max
        )
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
        runtime.settle_heap()

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
        return await _score_one(self.batcher, request)  # type: ignore[return-value]

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


if _SETTINGS.serving.fast_path:
    # At run time ChurnPredictor is a bentoml Service; its stubs say the class.
    ChurnPredictor.add_asgi_middleware(FastPredict)  # type: ignore[attr-defined]
