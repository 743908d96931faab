"""What fits the REST door to BentoML: metric labels, request timeout, OpenAPI, logs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from predictflow.contract import ErrorReply
from rest.answers import SCORING

log = logging.getLogger("predictflow.service")

#: The metrics label of every path no route serves.
UNKNOWN_ROUTE = "/{unknown}"
#: Where `RouteLabels` keeps the real path while BentoML's middlewares see the
#: route label.
REAL_PATH = "predictflow.real_path"


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
                scope[REAL_PATH] = scope["path"]
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


class PromptTimeout:
    """BentoML's request timeout, with its timer gone once the request is answered.

    BentoML 1.4's `TimeoutMiddleware` (the `traffic.timeout` of service.py)
    schedules a timer per request and never cancels it: each stays in the
    event loop with a future for the whole timeout, 30,000 of them in a
    worker at 3,000 req/s. Every full garbage collection walks them: most
    took 10-50 ms instead of under 10, and the service's P99 at saturation
    was 2-3x the baseline's (bench/README.md, "The saturation tail").

    This answers as BentoML's does: when no answer has started within the
    timeout, the app is cancelled and the caller gets a JSON 504; once one
    has, no limit. It runs on `asyncio.timeout`, whose timer goes when the
    request ends, and without a task per request. `install` puts it in
    place of BentoML's in a started app.
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    @classmethod
    def install(cls, app: object) -> bool:
        """Replace BentoML's timeout middleware in a started Starlette app's stack.

        False (and a warning) when there is none to replace: not a started
        Starlette app, or a BentoML whose stack holds no such middleware.
        """
        from bentoml._internal.server.http import traffic

        bentoml_timeout = getattr(traffic, "TimeoutMiddleware", None)
        node = getattr(app, "middleware_stack", None)
        # The stack is a short chain of middlewares, each calling `.app`.
        for _ in range(64):
            inner = getattr(node, "app", None)
            if inner is None:
                break
            if bentoml_timeout is not None and type(inner) is bentoml_timeout:
                node.app = cls(inner.app, inner.timeout)  # type: ignore[union-attr]
                return True
            node = inner
        log.warning(
            "event=prompt_timeout_unavailable reason=no_bentoml_timeout_middleware "
            "effect=request_timers_kept_until_they_expire"
        )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        answered = False

        async def answer(message: Message) -> None:
            nonlocal answered
            if not answered:
                answered = True
                if not deadline.expired():  # else the app answers its cancellation
                    deadline.reschedule(None)
            await send(message)

        try:
            async with asyncio.timeout(self.timeout) as deadline:
                await self.app(scope, receive, answer)
        except TimeoutError:
            if answered or not deadline.expired():
                raise  # the app's own, or an answer already under way
            await JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"},
                status_code=504,
            )(scope, receive, send)


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


class QuietClientErrors(logging.Filter):
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
BENTOML_HANDLER_LOGGER = "bentoml._internal.server.http_app"
