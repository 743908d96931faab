"""The PredictFlow churn-scoring service (BentoML).

Thin on purpose: requests are validated by the contract, scored by
`predictflow.scoring.Scorer` through a `MicroBatcher` (concurrent requests
share a feature read and a model call, on a thread of the batcher's own, so
the event loop never waits on the feature store), and errors mapped to HTTP
in `_error_response`.

`RestDoor`, an ASGI middleware added with BentoML's `add_asgi_middleware`,
is the REST door in front of every route. It sits inside BentoML's metrics,
tracing, timeout and concurrency middlewares (so what it answers is counted)
and does what a door does, in one place:

- limits: request bodies over `serving.max_body_bytes` (64 KiB on
  `/predict`) get 413, a scoring request that is not JSON gets 415, and past
  `serving.max_in_flight` requests in a worker a request gets 503 with
  `Retry-After` at once (the probes and `/metrics` are never refused);
- every answer carries `X-Request-ID` (the caller's, or a new one) and every
  non-2xx answer is logged once, one `key=value` line;
- nothing answers a plain-text 500: an exception becomes a JSON `ErrorReply`;
- the served OpenAPI document (`/docs.json`) states the errors the scoring
  routes answer;
- `POST /predict` is answered here when `serving.fast_path` is on (the
  default), skipping the per-request API machinery (router, IO descriptors,
  context), which costs more CPU than the scoring itself. The `predict` API
  below stays the declared contract (schema, OpenAPI, BentoML clients) and
  answers the same way when the fast path is off. See README, "Performance".

`RouteLabels` keeps BentoML's HTTP metrics bounded: BentoML labels them with
the raw request path, so every unknown path would make new series.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, get_args

import bentoml
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consumers.runner import KafkaRunner
from predictflow import metrics, runtime
from predictflow.auth import Tokens
from predictflow.batching import MicroBatcher
from predictflow.contract import (
    ChurnBatchRequest,
    ChurnBatchResponse,
    ChurnRequest,
    ChurnScore,
    ErrorCode,
    ErrorReply,
)
from predictflow.errors import (
    BatchTooLarge,
    Overloaded,
    PredictFlowError,
    RequestTooLarge,
    ScoringFailed,
    Unauthorized,
    UnsupportedMediaType,
    http_status,
)
from predictflow.features import OnlineFeatures
from predictflow.lifecycle import ModelFollower
from predictflow.model import ChurnModel
from predictflow.scoring import Scorer
from predictflow.settings import AuthSettings, ServingSettings, get_settings

log = logging.getLogger("predictflow.service")

#: Longest a readiness probe waits for the feature store: under the 2 s
#: timeout of the probes in k8s/, so a stalled store is a clear 503.
READINESS_CHECK_SECONDS = 1.5
#: Largest /predict body read (a full request is ~1 KB).
MAX_PREDICT_BODY_BYTES = 64 * 1024
#: Seconds a refused caller is asked to wait before it retries.
RETRY_AFTER_SECONDS = 1
#: Routes a probe or a scraper calls: never refused for load (BentoML's own
#: concurrency limit skips them too).
PROBES = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})
#: Routes open without a bearer token (orchestrators probe without one).
OPEN_ROUTES = frozenset({"/livez", "/healthz", "/readyz"})
SCORING = frozenset({"/predict", "/predict_batch"})
#: The metrics label of every path no route serves.
UNKNOWN_ROUTE = "/{unknown}"
#: Where `RouteLabels` keeps the real path while BentoML's middlewares see the
#: route label.
_REAL_PATH = "predictflow.real_path"
_ERROR_CODES = frozenset(get_args(ErrorCode))
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
#: The error code logged for a non-2xx answer whose body names none.
_STATUS_ERRORS = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    429: "too_many_requests",
    503: "unavailable",
    504: "timeout",
}

_NO_STORE = (b"cache-control", b"no-store")

_SETTINGS = get_settings()
#: BentoML service config that keeps the scoring routes out of tracing.
_UNTRACED = {"tracing": {"excluded_urls": ["/predict"]}}


def _error_response(reply: ErrorReply) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if reply.retryable else None
    return JSONResponse(
        reply.model_dump(), status_code=http_status(reply.error), headers=headers
    )


def _invalid_response(exc: ValidationError) -> JSONResponse:
    # The shape BentoML gives a request that fails its Pydantic model.
    return JSONResponse(
        {
            "error": f"{exc.error_count()} validation error for {exc.title}",
            "detail": exc.errors(include_context=False, include_input=False),
        },
        status_code=400,
    )


def _result_response(result: ChurnScore | ErrorReply) -> Response:
    if isinstance(result, ErrorReply):
        return _error_response(result)
    return Response(result.model_dump_json(), media_type="application/json")


async def _score_one(batcher: MicroBatcher, request: ChurnRequest) -> Response:
    try:
        result = await batcher.score(request)
    except PredictFlowError as exc:
        return _error_response(exc.to_reply())
    return _result_response(result)


@dataclass(slots=True)
class _Exchange:
    """What the door remembers of one request until it logs the answer."""

    request_id: bytes
    started: float
    status: int = 0
    error: str | None = None
    customer_id: str | None = None
    #: The name of the bearer token (never the token).
    caller: str | None = None


class RestDoor:
    """ASGI middleware: the REST door's limits, logs and fast path (module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: ServingSettings | None = None,
        batcher: Callable[[], MicroBatcher] | None = None,
        openapi: Callable[[], Mapping[str, Any]] | None = None,
        auth_settings: AuthSettings | None = None,
    ) -> None:
        self.app = app
        self.settings = settings or get_settings().serving
        auth_settings = auth_settings or get_settings().auth
        self._tokens = (
            Tokens(auth_settings.tokens_file) if auth_settings.tokens_file else None
        )
        self._open = OPEN_ROUTES | (
            set() if auth_settings.protect_metrics else {"/metrics"}
        )
        self._batcher = batcher or _service_batcher
        self._openapi = openapi or _service_openapi
        self._in_flight = 0
        self._labels_installed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and not self._labels_installed:
                self._labels_installed = True
                RouteLabels.install(scope.get("app"))
            await self.app(scope, receive, send)
            return
        real_path = scope.pop(_REAL_PATH, None)
        if real_path is not None:
            scope["path"] = real_path
        headers = _Headers.of(scope)
        exchange = _Exchange(headers.make_request_id(), time.perf_counter())

        scoring_route = scope["path"] in SCORING

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", exchange.request_id),
                    # A score is about one person: no cache may keep it.
                    *((_NO_STORE,) if scoring_route else ()),
                ]
            elif exchange.status >= 400 and exchange.error is None:
                exchange.error = _error_code(exchange.status, message.get("body", b""))
            await send(message)

        try:
            await self._serve(scope, receive, answer, exchange, headers)
        except asyncio.CancelledError:
            # BentoML's timeout middleware cancelled the request (it answers 504).
            exchange.status, exchange.error = 504, "timeout"
            raise
        except Exception:
            log.exception(
                "event=request_failed request_id=%s path=%s",
                exchange.request_id.decode(),
                scope["path"],
            )
            if exchange.status == 0:
                reply = ScoringFailed(
                    "the request could not be answered; the cause is in the service log"
                ).to_reply()
                await _error_response(reply)(scope, receive, answer)
        finally:
            if not 200 <= exchange.status < 300:
                _log_answer(scope, exchange)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        exchange: _Exchange,
        headers: _Headers,
    ) -> None:
        path = scope["path"]
        if self._tokens is not None and path not in self._open:
            exchange.caller = self._tokens.name_of(headers.authorization)
            if exchange.caller is None:
                await self._refuse(
                    Unauthorized(
                        "this route needs a valid 'Authorization: Bearer' token"
                    ),
                    scope,
                    receive,
                    send,
                    exchange,
                    extra_headers={"WWW-Authenticate": 'Bearer realm="predictflow"'},
                )
                return
            metrics.get().requests_by_token.labels(exchange.caller).inc()
        scoring = path in SCORING and scope["method"] == "POST"
        limit = self.settings.max_body_bytes
        if path == "/predict":
            limit = min(limit, MAX_PREDICT_BODY_BYTES)
        probe = path in PROBES
        refusal = _refusal(headers, scoring, limit)
        if refusal is None and not probe:
            if self._in_flight >= self.settings.max_in_flight:
                refusal = Overloaded(
                    f"this worker already holds {self._in_flight} requests; retry "
                    "shortly"
                )
        if refusal is not None:
            await self._refuse(refusal, scope, receive, send, exchange)
            return
        if probe and not headers.chunked:
            # Probes and scrapes are never refused for load, and stay cheap.
            await self.app(scope, receive, send)
            return
        self._in_flight += 1
        try:
            await self._serve_counted(
                scope, receive, send, exchange, scoring, limit, headers.chunked
            )
        finally:
            self._in_flight -= 1

    async def _serve_counted(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        exchange: _Exchange,
        scoring: bool,
        limit: int,
        chunked: bool,
    ) -> None:
        if not scoring and not chunked:
            # Content-Length is within the limit (checked), and the server
            # reads no more than it says.
            if scope["path"] == "/docs.json" and scope["method"] in ("GET", "HEAD"):
                await JSONResponse(self._openapi_document)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive, limit)
        if body is None:
            await self._refuse(
                RequestTooLarge(f"request body over {limit} bytes"),
                scope,
                receive,
                send,
                exchange,
            )
            return
        if scope["path"] == "/predict" and scoring and self.settings.fast_path:
            response = await self._fast_predict(body, exchange)
            await response(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _fast_predict(self, body: bytes, exchange: _Exchange) -> Response:
        try:
            request = ChurnRequest.model_validate_json(body)
        except ValidationError as exc:
            return _invalid_response(exc)
        exchange.customer_id = request.customer_id
        return await _score_one(self._batcher(), request)

    async def _refuse(
        self,
        error: PredictFlowError,
        scope: Scope,
        receive: Receive,
        send: Send,
        exchange: _Exchange,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        exchange.error = error.code
        response = _error_response(error.to_reply())
        if extra_headers:
            response.headers.update(extra_headers)
        await response(scope, receive, send)

    @cached_property
    def _openapi_document(self) -> Mapping[str, Any]:
        return document_errors(self._openapi())


def _service_batcher() -> MicroBatcher:
    service: ChurnPredictor = bentoml.get_current_service()
    return service.batcher


def _service_openapi() -> Mapping[str, Any]:
    spec: Mapping[str, Any] = ChurnPredictor.openapi_spec.asdict()  # type: ignore[attr-defined]
    return spec


@dataclass(slots=True)
class _Headers:
    """The request headers the door reads, found in one pass."""

    length: bytes | None = None
    media: bytes = b""
    transfer_encoding: bool = False
    request_id: bytes | None = None
    authorization: str | None = None

    @classmethod
    def of(cls, scope: Scope) -> _Headers:
        found = cls()
        for name, value in scope["headers"]:
            if name == b"content-length":
                found.length = value
            elif name == b"content-type":
                found.media = value
            elif name == b"transfer-encoding":
                found.transfer_encoding = True
            elif name == b"x-request-id":
                found.request_id = value
            elif name == b"authorization":
                found.authorization = value.decode("latin-1")
        return found

    @property
    def chunked(self) -> bool:
        """True when the body's length is not given up front."""
        return self.length is None and self.transfer_encoding

    def make_request_id(self) -> bytes:
        """The caller's X-Request-ID when it is a plain token, else a new one."""
        # It goes into a log line and a response header: no spaces, no
        # control characters, bounded.
        if self.request_id is not None and _REQUEST_ID.fullmatch(self.request_id):
            return bytes(self.request_id)
        return os.urandom(16).hex().encode()


def _refusal(headers: _Headers, scoring: bool, limit: int) -> PredictFlowError | None:
    """The error a request gets from its headers alone, if any."""
    length = headers.length
    if length is not None and (not length.isdigit() or int(length) > limit):
        return RequestTooLarge(f"request body over {limit} bytes")
    if scoring:
        media = headers.media.split(b";", 1)[0].strip().lower()
        if media != b"application/json" and not media.endswith(b"+json"):
            shown = media.decode("latin-1")[:100] or "none"
            return UnsupportedMediaType(
                f"content type {shown!r}: this route reads application/json"
            )
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body already read, then what the server sends."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _error_code(status: int, body: bytes) -> str:
    if body[:1] == b"{" and len(body) <= 4096:
        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            error = None
        if error in _ERROR_CODES:
            return str(error)
    return _STATUS_ERRORS.get(status, f"http_{status}")


def _log_answer(scope: Scope, exchange: _Exchange) -> None:
    status = exchange.status or 499  # the client went away before an answer
    log.log(
        logging.WARNING if status >= 500 else logging.INFO,
        "event=http_error method=%s path=%s status=%d error=%s request_id=%s "
        "customer_id=%s caller=%s duration_ms=%.1f",
        scope["method"],
        _log_path(scope["path"]),
        status,
        exchange.error or _STATUS_ERRORS.get(status, f"http_{status}"),
        exchange.request_id.decode(),
        exchange.customer_id or "-",
        exchange.caller or "-",
        (time.perf_counter() - exchange.started) * 1000,
    )


def _log_path(path: str) -> str:
    # A caller's path goes into one log line: no spaces, bounded.
    return path[:200].replace(" ", "%20") or "/"


class RouteLabels:
    """Outermost ASGI wrapper: BentoML's middlewares see route templates, not paths.

    BentoML 1.4 labels its HTTP metrics (`bentoml_service_request_*`) with
    `scope["path"]` as it enters its metrics middleware, the outermost one it
    adds, so each unknown path would create new series forever. This wrapper
    runs before it and puts the route's template in `scope["path"]` (a mount
    as `<prefix>/{path}`, a path no route serves as `/{unknown}`); `RestDoor`
    puts the real path back before routing. Paths of exact routes (all the
    hot ones) are not touched.
    """

    def __init__(self, app: ASGIApp, routes: Iterable[Any]) -> None:
        from starlette.routing import Mount

        self.app = app
        self.routes = list(routes)
        self.exact = frozenset(
            route.path
            for route in self.routes
            if not isinstance(route, Mount) and "{" not in getattr(route, "path", "{")
        )
        self._mount = Mount

    @classmethod
    def install(cls, app: object) -> bool:
        """Wrap a started Starlette app's middleware stack; False if it is not one.

        BentoML builds the app and hands it to uvicorn, with no hook to add
        a middleware outside its own: the stack is wrapped when the app
        starts (its lifespan), through Starlette's `middleware_stack`.
        """
        from starlette.applications import Starlette

        if not isinstance(app, Starlette) or app.middleware_stack is None:
            log.warning(
                "event=route_labels_unavailable reason=not_a_started_starlette_app "
                "effect=http_metrics_labelled_by_raw_path"
            )
            return False
        if not isinstance(app.middleware_stack, cls):
            app.middleware_stack = cls(app.middleware_stack, app.routes)
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.exact:
            label = self.label(scope)
            if label != scope["path"]:
                scope[_REAL_PATH] = scope["path"]
                scope["path"] = label
        await self.app(scope, receive, send)

    def label(self, scope: Scope) -> str:
        """The route template that serves the request's path, or `/{unknown}`."""
        from starlette.routing import Match

        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                path: str = route.path
                return f"{path}/{{path}}" if isinstance(route, self._mount) else path
        return UNKNOWN_ROUTE


def document_errors(spec: Mapping[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI document with the errors the scoring routes really answer.

    BentoML documents a generic 400/404/500 body; this states ours: BentoML's
    validation shape for 400 (`detail` is a list of field errors) and an
    `ErrorReply` for 404, 413, 415, 500 and 503.
    """
    document = json.loads(json.dumps(spec))
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["ValidationErrorReply"] = _VALIDATION_ERROR_SCHEMA
    schemas.setdefault("ErrorReply", ErrorReply.model_json_schema())
    error_reply = {"$ref": "#/components/schemas/ErrorReply"}
    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer"},
        }
    }
    responses = {
        "400": _documented(
            "The body is not valid JSON or breaks the contract.",
            {"$ref": "#/components/schemas/ValidationErrorReply"},
        ),
        "404": _documented(
            "Unknown customer (give every feature to score a new one).", error_reply
        ),
        "413": _documented(
            "Body over the size limit, or a batch over the batch limit.", error_reply
        ),
        "415": _documented("The body is not `application/json`.", error_reply),
        "500": _documented(
            "This request could not be scored (cause in the service log).",
            error_reply,
        ),
        "503": _documented(
            "Feature store unavailable or too slow, or the worker is overloaded: "
            "retry after `Retry-After` seconds (`retryable` is true).",
            error_reply,
            retry_after,
        ),
    }
    for route in SCORING:
        operation = document.get("paths", {}).get(route, {}).get("post")
        if operation is not None:
            operation["responses"] = {
                "200": operation.get("responses", {}).get("200", {}),
                **responses,
            }
    return dict(document)


def _documented(
    description: str, schema: Mapping[str, Any], headers: Mapping[str, Any] = {}
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": dict(schema)}},
    }
    if headers:
        response["headers"] = dict(headers)
    return response


_VALIDATION_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "ValidationErrorReply",
    "description": "A request that fails the contract (BentoML's shape).",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "A one-line summary."},
        "detail": {
            "type": "array",
            "description": "One entry per field error (Pydantic's).",
            "items": {
                "type": "object",
                "required": ["type", "loc", "msg"],
                "properties": {
                    "type": {"type": "string"},
                    "loc": {
                        "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    },
                    "msg": {"type": "string"},
                    "url": {"type": "string"},
                },
            },
        },
    },
}


class _QuietClientErrors(logging.Filter):
    """Drops BentoML's ERROR traceback for a request that was the caller's fault.

    BentoML's API handler logs every exception it answers with a traceback,
    a 400 for invalid input included (~1.9 KB each); `RestDoor` logs that
    answer in one line. Server errors keep their traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        exc = record.exc_info[1]
        if isinstance(exc, ValidationError):
            return False
        code = getattr(getattr(exc, "error_code", None), "value", None)
        return not (isinstance(code, int) and code < 500)


#: The logger of BentoML's API handler (`log_exception`).
_BENTOML_HANDLER_LOGGER = "bentoml._internal.server.http_app"


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
        serving = settings.serving
        self.batcher = MicroBatcher(
            self.scorer,
            source="rest",
            max_size=serving.micro_batch_max,
            timeout=serving.feature_timeout_seconds,
            max_queue=serving.max_queued_customers,
        )
        self._ready: bool | None = None
        self._probe: asyncio.Future[None] | None = None
        self.kafka: KafkaRunner | None = None
        self._kafka_task: asyncio.Task[None] | None = None
        # BentoML's logging config leaves the root at WARNING: without a level
        # of their own, our INFO events (a 4xx answer, ready again) are lost.
        logging.getLogger("predictflow").setLevel(settings.log_level.upper())
        logger = logging.getLogger(_BENTOML_HANDLER_LOGGER)
        if not any(isinstance(f, _QuietClientErrors) for f in logger.filters):
            logger.addFilter(_QuietClientErrors())
        metrics.get().model_info.labels(model.version).set(1)
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
        runtime.settle_heap()

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
            results = await self.batcher.score_many(batch.requests)
        except PredictFlowError as exc:
            return _error_response(exc.to_reply())  # type: ignore[return-value]
        return ChurnBatchResponse(results=results)


# At run time ChurnPredictor is a bentoml Service; its stubs say the class.
ChurnPredictor.add_asgi_middleware(RestDoor)  # type: ignore[attr-defined]
