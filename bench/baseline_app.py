"""The baseline: the service's per-request work in a minimal FastAPI app.

Same contract, and the same scoring core built by the same function
(`predictflow.serving.build_core`: the `Scorer` over the same `OnlineFeatures`
and the same `ChurnModel` from the same Bento store entry, behind the same
`MicroBatcher`, with the same lean imports and heap settling at start-up);
run by uvicorn with as many workers as the service (uvloop and httptools, as
BentoML's worker). Its answers are the REST door's
(`rest.answers`). What differs from `service.py` is only the framework.

    uvicorn bench.baseline_app:app --workers 2
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response

from predictflow.batching import MicroBatcher
from predictflow.contract import ChurnRequest
from predictflow.errors import PredictFlowError
from predictflow.features import OnlineFeatures
from predictflow.serving import build_core
from predictflow.settings import get_settings
from rest.answers import error_response, score_one


class _State:
    features: OnlineFeatures
    batcher: MicroBatcher


state = _State()


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    core = build_core(settings)
    state.features = core.features
    state.batcher = core.batcher(settings, source="baseline")
    core.settle()
    yield


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


@app.post("/predict", response_model=None)
async def predict(request: ChurnRequest) -> Response:
    # Scored on the event loop, as service.py's `async def predict` does.
    return await score_one(state.batcher, request)


@app.get("/readyz", response_model=None)
def readyz() -> Response:
    try:
        state.features.check()
    except PredictFlowError as exc:
        return error_response(exc.to_reply())
    return Response("ready")
