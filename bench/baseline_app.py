"""The baseline: the service's per-request work in a minimal FastAPI app.

Same contract, same `Scorer` over the same `OnlineFeatures` (Feast, configured
by the same `PREDICTFLOW_*` settings) and the same `ChurnModel` from the same
Bento store entry, behind the same `MicroBatcher`, with the same lean
imports and heap settling at start-up; run by uvicorn with as many workers
as the service (uvloop and httptools, as BentoML's worker). What differs
from `service.py` is only the framework.

    uvicorn bench.baseline_app:app --workers 2
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import bentoml
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from predictflow import runtime
from predictflow.batching import MicroBatcher
from predictflow.contract import ChurnRequest, ErrorReply
from predictflow.errors import PredictFlowError, http_status
from predictflow.features import OnlineFeatures
from predictflow.model import ChurnModel
from predictflow.scoring import Scorer
from predictflow.settings import get_settings


class _State:
    features: OnlineFeatures
    batcher: MicroBatcher


state = _State()


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    runtime.lean_imports()
    settings = get_settings()
    ref = bentoml.models.get(settings.serving.model_tag)
    model = ChurnModel.from_mlflow_dir(Path(ref.path_of("mlflow_model")), str(ref.tag))
    state.features = OnlineFeatures.open(settings.feast)
    state.batcher = MicroBatcher(
        Scorer(state.features, model),
        source="baseline",
        max_size=settings.serving.micro_batch_max,
    )
    runtime.settle_heap()
    yield


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


def _error(reply: ErrorReply) -> JSONResponse:
    return JSONResponse(reply.model_dump(), status_code=http_status(reply.error))


@app.post("/predict", response_model=None)
async def predict(request: ChurnRequest) -> Response:
    # Scored on the event loop, as service.py's `async def predict` does.
    try:
        result = await state.batcher.score(request)
    except PredictFlowError as exc:
        return _error(exc.to_reply())
    if isinstance(result, ErrorReply):
        return _error(result)
    return Response(result.model_dump_json(), media_type="application/json")


@app.get("/readyz", response_model=None)
def readyz() -> Response:
    try:
        state.features.check()
    except PredictFlowError as exc:
        return _error(exc.to_reply())
    return Response("ready")
