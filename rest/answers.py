"""The answers of the REST door: errors and scores as HTTP, one mapping for every path.

The fast path, the API path (service.py) and the benchmark's baseline answer
through these, so a given outcome is the same answer whichever way it came.
"""

from __future__ import annotations

import json
from typing import get_args

from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from predictflow.batching import MicroBatcher
from predictflow.contract import ChurnRequest, ChurnResult, ErrorCode, ErrorReply
from predictflow.errors import PredictFlowError, http_status

#: The routes that score (their errors are documented in the OpenAPI document).
SCORING = frozenset({"/predict", "/predict_batch"})
#: Seconds a refused caller is asked to wait before it retries.
RETRY_AFTER_SECONDS = 1
ERROR_CODES = frozenset(get_args(ErrorCode))
#: The error code logged for a non-2xx answer whose body names none.
STATUS_ERRORS = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    429: "too_many_requests",
    503: "unavailable",
    504: "timeout",
}


def error_response(reply: ErrorReply) -> JSONResponse:
    """The JSON answer of an error, with `Retry-After` when retrying may help."""
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if reply.retryable else None
    return JSONResponse(
        reply.model_dump(), status_code=http_status(reply.error), headers=headers
    )


def invalid_response(exc: ValidationError) -> JSONResponse:
    """400 in the shape BentoML gives a request that fails its Pydantic model."""
    return JSONResponse(
        {
            "error": f"{exc.error_count()} validation error for {exc.title}",
            "detail": exc.errors(include_context=False, include_input=False),
        },
        status_code=400,
    )


def result_response(result: ChurnResult) -> Response:
    """A score as JSON, or its error."""
    if isinstance(result, ErrorReply):
        return error_response(result)
    return Response(result.model_dump_json(), media_type="application/json")


async def score_one(batcher: MicroBatcher, request: ChurnRequest) -> Response:
    """Score one request through the batcher and answer it."""
    try:
        result = await batcher.score(request)
    except PredictFlowError as exc:
        return error_response(exc.to_reply())
    return result_response(result)


def error_code(status: int, body: bytes) -> str:
    """The error code an answer names (its JSON `error`), else one for its status."""
    if body[:1] == b"{" and len(body) <= 4096:
        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            error = None
        if error in ERROR_CODES:
            return str(error)
    return STATUS_ERRORS.get(status, f"http_{status}")
