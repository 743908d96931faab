"""The REST door in-process: `RestDoor` in front of a stand-in for BentoML's handler.

The stand-in is a Starlette router (BentoML's app has one) whose scoring routes
echo what they read, so a test sees what the door passed on. The real
`bentoml serve` is in tests/integration/test_rest_faults.py.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from predictflow.batching import MicroBatcher
from predictflow.contract import ChurnRequest
from predictflow.model import ChurnModel
from predictflow.scoring import Scorer
from predictflow.settings import ServingSettings
from rest.bentoml_fit import QuietClientErrors, RouteLabels
from rest.door import RestDoor
from tests.unit.test_batching import StalledFeatures
from tests.unit.test_encoding import ROW
from tests.unit.test_scoring import FakeFeatures

SPEC: dict[str, Any] = {
    "paths": {
        "/predict": {"post": {"responses": {"200": {"description": "ok"}}}},
        "/predict_batch": {"post": {"responses": {"200": {"description": "ok"}}}},
        "/livez": {"get": {"responses": {"200": {"description": "ok"}}}},
    },
    "components": {"schemas": {}},
}


async def _echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"route": request.url.path, "bytes": len(body)})


async def _boom(_: Request) -> Response:
    raise RuntimeError("secret internals at 10.0.0.7:6379")


async def _livez(_: Request) -> Response:
    return PlainTextResponse("\n")


async def _static(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse(scope["path"])(scope, receive, send)


ROUTES = [
    Route("/predict", _echo, methods=["POST"]),
    Route("/predict_batch", _echo, methods=["POST"]),
    Route("/livez", _livez),
    Route("/boom", _boom),
    Mount("/static_content", app=_static),
]


def _door(batcher: MicroBatcher, *, fast_path: bool = True, **limits: int) -> RestDoor:
    settings = ServingSettings(fast_path=fast_path, **limits)  # type: ignore[arg-type]
    return RestDoor(
        # A router, as inside BentoML's app: Starlette's own error middleware
        # is outside the door there.
        Router(routes=ROUTES),
        settings=settings,
        batcher=lambda: batcher,
        openapi=lambda: SPEC,
    )


@pytest.fixture
def features() -> FakeFeatures:
    return FakeFeatures({"A": ROW, "BAD": {**ROW, "internet_service": "Satellite"}})


@pytest.fixture
def batcher(features: FakeFeatures, small_model: ChurnModel) -> Iterator[MicroBatcher]:
    batcher = MicroBatcher(Scorer(features, small_model), source="test")
    yield batcher
    batcher.close()


def _client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://door"
    )


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("fast_path", [True, False])
async def test_scoring_and_its_errors_are_json_with_a_request_id(
    batcher: MicroBatcher, fast_path: bool
) -> None:
    async with _client(_door(batcher, fast_path=fast_path)) as client:
        ok = await client.post("/predict", json={"customer_id": "A"})
        given = await client.post(
            "/predict", json={"customer_id": "A"}, headers={"x-request-id": "abc-1"}
        )
    assert ok.status_code == 200, ok.text
    assert len(ok.headers["x-request-id"]) == 32
    assert given.headers["x-request-id"] == "abc-1"
    async with _client(_door(batcher, fast_path=fast_path)) as client:
        spaced = await client.post(
            "/predict", json={"customer_id": "A"}, headers={"x-request-id": "a b=c"}
        )
    # Not a plain token: replaced, so log lines stay parseable.
    assert len(spaced.headers["x-request-id"]) == 32
    if fast_path:
        assert ok.json()["customer_id"] == "A"
    else:  # the body reached BentoML's handler whole
        assert ok.json() == {"route": "/predict", "bytes": len(ok.request.content)}


async def test_fast_path_errors_are_json(batcher: MicroBatcher) -> None:
    async with _client(_door(batcher)) as client:
        unknown = await client.post("/predict", json={"customer_id": "NOPE"})
        invalid = await client.post("/predict", json={"customer_id": "bad id"})
        bad_row = await client.post("/predict", json={"customer_id": "BAD"})
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_customer"
    assert invalid.status_code == 400
    assert invalid.json()["detail"][0]["loc"] == ["customer_id"]
    assert bad_row.status_code == 500
    assert bad_row.json()["error"] == "internal_error"
    assert "Satellite" not in bad_row.text


@pytest.mark.parametrize("path", ["/predict", "/predict_batch", "/livez", "/nope"])
async def test_a_body_over_the_limit_is_413(batcher: MicroBatcher, path: str) -> None:
    async with _client(_door(batcher, max_body_bytes=4096)) as client:
        sized = await client.post(path, content=b"{" + b" " * 5000, headers=JSON)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b" " * 1000

        chunked = await client.post(path, content=chunks(), headers=JSON)
    for r in (sized, chunked):
        assert r.status_code == 413, r.text
        assert r.json()["error"] == "request_too_large"
        assert r.headers["x-request-id"]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "multipart/form-data; boundary=x", "application/x-pickle", None],
)
@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("path", ["/predict", "/predict_batch"])
async def test_a_scoring_body_that_is_not_json_is_415(
    batcher: MicroBatcher, path: str, fast_path: bool, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    async with _client(_door(batcher, fast_path=fast_path)) as client:
        r = await client.post(path, content=b'{"customer_id": "A"}', headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["error"] == "unsupported_media_type"


async def test_past_the_in_flight_limit_a_request_is_refused_at_once(
    small_model: ChurnModel,
) -> None:
    stalled = StalledFeatures({"A": ROW}, hang=5.0)
    batcher = MicroBatcher(Scorer(stalled, small_model), source="test", timeout=4)
    async with _client(_door(batcher, max_in_flight=2)) as client:
        held = [
            asyncio.ensure_future(client.post("/predict", json={"customer_id": "A"}))
            for _ in range(2)
        ]
        await asyncio.to_thread(stalled.entered.wait, 2.0)
        await asyncio.sleep(0.01)
        refused = await client.post("/predict", json={"customer_id": "A"})
        livez = await client.get("/livez")
        stalled.released.set()
        answered = await asyncio.gather(*held)
    batcher.close()
    assert refused.status_code == 503
    assert refused.json()["error"] == "overloaded"
    assert refused.json()["retryable"] is True
    assert refused.headers["retry-after"] == "1"
    assert livez.status_code == 200
    assert [r.status_code for r in answered] == [200, 200]


async def test_a_stalled_store_is_503_with_retry_after(
    small_model: ChurnModel,
) -> None:
    stalled = StalledFeatures({"A": ROW}, hang=2.0)
    batcher = MicroBatcher(Scorer(stalled, small_model), source="test", timeout=0.1)
    async with _client(_door(batcher)) as client:
        r = await client.post("/predict", json={"customer_id": "A"})
    stalled.released.set()
    batcher.close()
    assert r.status_code == 503
    assert r.json()["error"] == "feature_store_unavailable"
    assert r.headers["retry-after"] == "1"


async def test_an_exception_is_a_json_500_without_internals(
    batcher: MicroBatcher, caplog: pytest.LogCaptureFixture
) -> None:
    async with _client(_door(batcher)) as client:
        r = await client.get("/boom", headers={"x-request-id": "boom-1"})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"] == "internal_error"
    assert "10.0.0.7" not in r.text
    lines = [rec.getMessage() for rec in caplog.records if "boom-1" in rec.getMessage()]
    assert any("event=request_failed" in line for line in lines)
    answers = [line for line in lines if "event=http_error" in line]
    assert len(answers) == 1 and "status=500" in answers[0]


async def test_each_non_2xx_answer_is_logged_once(
    batcher: MicroBatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="predictflow.service")
    async with _client(_door(batcher)) as client:
        await client.post("/predict", json={"customer_id": "A"})
        await client.post(
            "/predict", json={"customer_id": "NOPE"}, headers={"x-request-id": "r404"}
        )
        await client.post("/predict", content=b"x", headers={"x-request-id": "r415"})
    answers = [
        r.getMessage() for r in caplog.records if "event=http_error" in r.getMessage()
    ]
    assert len(answers) == 2
    assert (
        "status=404 error=unknown_customer request_id=r404 customer_id=NOPE"
        in answers[0]
    )
    assert "status=415 error=unsupported_media_type request_id=r415" in answers[1]


async def test_the_openapi_document_states_the_scoring_errors(
    batcher: MicroBatcher,
) -> None:
    async with _client(_door(batcher)) as client:
        spec = (await client.get("/docs.json")).json()
    for route in ("/predict", "/predict_batch"):
        responses = spec["paths"][route]["post"]["responses"]
        assert set(responses) == {"200", "400", "404", "413", "415", "500", "503"}
        assert "Retry-After" in responses["503"]["headers"]
        ref = responses["400"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ValidationErrorReply")
    detail = spec["components"]["schemas"]["ValidationErrorReply"]["properties"]
    assert detail["detail"]["type"] == "array"
    assert spec["paths"]["/livez"] == SPEC["paths"]["/livez"]


# --- route labels: an oracle against Starlette's public app --------------------


class PathRecorder:
    """Records `scope["path"]` as BentoML's metrics middleware reads it."""

    seen: list[str] = []

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            PathRecorder.seen.append(scope["path"])
        await self.app(scope, receive, send)


async def _started(app: Starlette) -> asyncio.Task[None]:
    """Run the app's lifespan startup (as uvicorn does) and keep it running."""
    events: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await events.put({"type": "lifespan.startup"})
    started = asyncio.Event()

    async def send(message: Any) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    task = asyncio.ensure_future(app({"type": "lifespan"}, events.get, send))
    await asyncio.wait_for(started.wait(), 5)
    return task


async def test_metrics_see_route_templates_and_routing_sees_real_paths(
    batcher: MicroBatcher,
) -> None:
    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(PathRecorder),
            Middleware(
                RestDoor,
                settings=ServingSettings(fast_path=False),
                batcher=lambda: batcher,
                openapi=lambda: SPEC,
            ),
        ],
    )
    lifespan = await _started(app)
    PathRecorder.seen = []
    async with _client(app) as client:
        static = await client.get("/static_content/a1b2.css")
        unknown = await client.get("/x/f00d")
        scored = await client.post("/predict", json={"customer_id": "A"})
    lifespan.cancel()
    assert PathRecorder.seen == ["/static_content/{path}", "/{unknown}", "/predict"]
    assert static.text.endswith("/a1b2.css")  # the mount got the real path
    assert unknown.status_code == 404
    assert scored.json()["route"] == "/predict"


def test_route_labels_refuse_what_is_not_a_started_starlette_app() -> None:
    assert RouteLabels.install(object()) is False
    assert RouteLabels.install(Starlette()) is False  # not started


def test_bentoml_client_error_tracebacks_are_dropped_server_errors_kept() -> None:
    quiet = QuietClientErrors()

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            info = sys.exc_info()
        return logging.LogRecord("x", logging.ERROR, "f", 1, "Exception", (), info)

    try:
        ChurnRequest.model_validate({})
    except ValidationError as invalid:
        assert not quiet.filter(record(invalid))
    assert quiet.filter(record(RuntimeError("server side")))
    assert quiet.filter(logging.LogRecord("x", logging.ERROR, "f", 1, "m", (), None))


def _locked_door(
    batcher: MicroBatcher, tokens_file: Any, *, fast_path: bool = True, **auth: Any
) -> RestDoor:
    from predictflow.settings import AuthSettings

    return RestDoor(
        Router(routes=ROUTES),
        settings=ServingSettings(fast_path=fast_path),
        batcher=lambda: batcher,
        openapi=lambda: SPEC,
        auth_settings=AuthSettings(tokens_file=tokens_file, **auth),
    )


@pytest.mark.parametrize("fast_path", [True, False])
async def test_every_route_but_the_probes_needs_a_valid_token(
    batcher: MicroBatcher,
    fast_path: bool,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from predictflow import auth

    good, revoked = auth.new_token("billing"), auth.new_token("old")
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"{good.line}\n{revoked.line}\n")
    door = _locked_door(batcher, tokens_file, fast_path=fast_path)
    routes = [
        ("POST", "/predict", {"customer_id": "A"}),
        ("POST", "/predict_batch", {"requests": [{"customer_id": "A"}]}),
        ("GET", "/docs.json", None),
        ("GET", "/static_content/index.html", None),
    ]
    caplog.set_level(logging.INFO)
    async with _client(door) as client:
        for method, path, body in routes:
            for header in (
                {},
                {"authorization": "Bearer nope"},
                {"authorization": good.token},
            ):
                r = await client.request(method, path, json=body, headers=header)
                assert r.status_code == 401, (path, header, r.text)
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert r.json()["error"] == "unauthorized"
            r = await client.request(
                method,
                path,
                json=body,
                headers={"authorization": f"Bearer {good.token}"},
            )
            assert r.status_code == 200, (path, r.text)
        for probe in ("/livez",):
            assert (await client.get(probe)).status_code == 200
        # Rotation: the file changes, the revoked token stops working at once.
        assert (
            await client.post(
                "/predict",
                json={"customer_id": "A"},
                headers={"authorization": f"Bearer {revoked.token}"},
            )
        ).status_code == 200
        tokens_file.write_text(f"{good.line}\n")
        door._tokens._checked = 0.0  # type: ignore[union-attr]  # skip the 1 s wait
        r = await client.post(
            "/predict",
            json={"customer_id": "A"},
            headers={"authorization": f"Bearer {revoked.token}"},
        )
        assert r.status_code == 401
    assert good.token not in caplog.text and revoked.token not in caplog.text
    assert "caller=-" in caplog.text


async def test_metrics_are_open_unless_protected(
    batcher: MicroBatcher, tmp_path: Any
) -> None:
    from predictflow import auth

    made = auth.new_token("prometheus")
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(made.line + "\n")
    routes = [*ROUTES, Route("/metrics", _livez)]
    for protect, status in ((False, 200), (True, 401)):
        from predictflow.settings import AuthSettings

        door = RestDoor(
            Router(routes=routes),
            settings=ServingSettings(),
            batcher=lambda: batcher,
            openapi=lambda: SPEC,
            auth_settings=AuthSettings(
                tokens_file=tokens_file, protect_metrics=protect
            ),
        )
        async with _client(door) as client:
            assert (await client.get("/metrics")).status_code == status


async def test_scores_are_never_cached(batcher: MicroBatcher) -> None:
    async with _client(_door(batcher)) as client:
        r = await client.post("/predict", json={"customer_id": "A"})
        assert r.headers["cache-control"] == "no-store"
        assert "cache-control" not in (await client.get("/livez")).headers
