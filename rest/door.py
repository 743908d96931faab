"""The REST door: an ASGI middleware in front of every route of the service.

`RestDoor` is added to the BentoML service with `add_asgi_middleware`
(service.py). It sits inside BentoML's metrics, tracing, request-timeout
and concurrency middlewares (so what it answers is counted; when the app
starts it swaps BentoML's request timeout for `rest.bentoml_fit.PromptTimeout`,
which leaves no timer behind) and does what a door does, in one place:

- limits: request bodies over `serving.max_body_bytes` (64 KiB on
  `/predict`) get 413, a scoring request that is not JSON gets 415, and past
  `serving.max_in_flight` requests in a worker a request gets 503 with
  `Retry-After` at once (the probes and `/metrics` are never refused);
- bearer tokens (`auth.tokens_file`): every route but the probes needs one;
- every answer carries `X-Request-ID` (the caller's, or a new one) and every
  non-2xx answer is logged once, one `key=value` line;
- nothing answers a plain-text 500: an exception becomes a JSON `ErrorReply`;
- the served OpenAPI document (`/docs.json`) states the errors the scoring
  routes answer;
- `POST /predict` is answered here when `serving.fast_path` is on (the
  default), skipping the per-request API machinery (router, IO descriptors,
  context), which costs more CPU than the scoring itself. The service's
  `predict` API stays the declared contract (schema, OpenAPI, BentoML
  clients) and answers the same way when the fast path is off.

The answers themselves are in `rest.answers` (one mapping for every path);
what fits the door to BentoML (metric labels, OpenAPI, logs) in
`rest.bentoml_fit`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from predictflow import metrics
from predictflow.auth import Tokens
from predictflow.batching import MicroBatcher
from predictflow.contract import ChurnRequest
from predictflow.errors import (
    Overloaded,
    PredictFlowError,
    RequestTooLarge,
    ScoringFailed,
    Unauthorized,
    UnsupportedMediaType,
)
from predictflow.settings import AuthSettings, ServingSettings, get_settings
from rest.answers import (
    SCORING,
    STATUS_ERRORS,
    error_code,
    error_response,
    invalid_response,
    score_one,
)
from rest.bentoml_fit import REAL_PATH, PromptTimeout, RouteLabels, document_errors

log = logging.getLogger("predictflow.service")

#: Largest /predict body read (a full request is ~1 KB).
MAX_PREDICT_BODY_BYTES = 64 * 1024
#: Routes a probe or a scraper calls: never refused for load (BentoML's own
#: concurrency limit skips them too).
PROBES = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})
#: Routes open without a bearer token (orchestrators probe without one).
OPEN_ROUTES = frozenset({"/livez", "/healthz", "/readyz"})
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
_NO_STORE = (b"cache-control", b"no-store")


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
        batcher: Callable[[], MicroBatcher],
        openapi: Callable[[], Mapping[str, Any]],
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
        self._batcher = batcher
        self._openapi = openapi
        self._in_flight = 0
        self._fitted = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and not self._fitted:
                self._fitted = True
                RouteLabels.install(scope.get("app"))
                PromptTimeout.install(scope.get("app"))
            await self.app(scope, receive, send)
            return
        real_path = scope.pop(REAL_PATH, None)
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
                exchange.error = error_code(exchange.status, message.get("body", b""))
            await send(message)

        try:
            await self._serve(scope, receive, answer, exchange, headers)
        except asyncio.CancelledError:
            # The request timeout cancelled the request (it answers 504).
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
                await error_response(reply)(scope, receive, answer)
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
            return invalid_response(exc)
        exchange.customer_id = request.customer_id
        return await score_one(self._batcher(), request)

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
        response = error_response(error.to_reply())
        if extra_headers:
            response.headers.update(extra_headers)
        await response(scope, receive, send)

    @cached_property
    def _openapi_document(self) -> Mapping[str, Any]:
        return document_errors(self._openapi())


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


def _log_answer(scope: Scope, exchange: _Exchange) -> None:
    status = exchange.status or 499  # the client went away before an answer
    log.log(
        logging.WARNING if status >= 500 else logging.INFO,
        "event=http_error method=%s path=%s status=%d error=%s request_id=%s "
        "customer_id=%s caller=%s duration_ms=%.1f",
        scope["method"],
        _log_path(scope["path"]),
        status,
        exchange.error or STATUS_ERRORS.get(status, f"http_{status}"),
        exchange.request_id.decode(),
        exchange.customer_id or "-",
        exchange.caller or "-",
        (time.perf_counter() - exchange.started) * 1000,
    )


def _log_path(path: str) -> str:
    # A caller's path goes into one log line: no spaces, bounded.
    return path[:200].replace(" ", "%20") or "/"
