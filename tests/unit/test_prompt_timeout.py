"""The request timeout in front of the REST door (`rest.bentoml_fit.PromptTimeout`).

BentoML's own `TimeoutMiddleware` leaves one timer per request in the event
loop for the whole timeout, answered or not; the door swaps it for one that
answers the same way and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import Message, Receive, Scope, Send

from predictflow.batching import MicroBatcher
from predictflow.model import ChurnModel
from predictflow.scoring import Scorer
from predictflow.settings import ServingSettings
from rest.bentoml_fit import PromptTimeout
from rest.door import RestDoor
from tests.unit.test_encoding import ROW
from tests.unit.test_rest_door import ROUTES, SPEC, _client, _started
from tests.unit.test_scoring import FakeFeatures

TIMEOUT_S = 10.0


@pytest.fixture
def batcher(small_model: ChurnModel) -> Iterator[MicroBatcher]:
    batcher = MicroBatcher(Scorer(FakeFeatures({"A": ROW}), small_model), source="test")
    yield batcher
    batcher.close()


def _pending_timers(later_than: float) -> int:
    """Timers of the running loop still due to fire more than `later_than` s ahead."""
    loop = asyncio.get_running_loop()
    horizon = loop.time() + later_than
    scheduled = loop._scheduled  # type: ignore[attr-defined]
    return sum(
        1 for timer in scheduled if not timer.cancelled() and timer.when() > horizon
    )


def _service_like(batcher: MicroBatcher) -> Starlette:
    """BentoML's timeout middleware outside the door, as in service.py's stack."""
    return Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(TimeoutMiddleware, timeout=TIMEOUT_S),
            Middleware(
                RestDoor,
                settings=ServingSettings(),
                batcher=lambda: batcher,
                openapi=lambda: SPEC,
            ),
        ],
    )


async def test_answered_requests_leave_no_timer_behind(
    batcher: MicroBatcher,
) -> None:
    app = _service_like(batcher)
    lifespan = await _started(app)
    before = _pending_timers(TIMEOUT_S / 2)
    async with _client(app) as client:
        for _ in range(200):
            answer = await client.post("/predict", json={"customer_id": "A"})
            assert answer.status_code == 200, answer.text
    # BentoML's middleware would hold 200 timers here, due in ~10 s.
    assert _pending_timers(TIMEOUT_S / 2) - before < 5
    lifespan.cancel()


async def test_the_door_finds_bentoml_timeout_in_a_started_stack(
    batcher: MicroBatcher,
) -> None:
    app = _service_like(batcher)
    lifespan = await _started(app)
    found = []
    node = app.middleware_stack
    while node is not None:
        found.append(type(node))
        node = getattr(node, "app", None)
    lifespan.cancel()
    assert PromptTimeout in found and TimeoutMiddleware not in found
    swapped = found.index(PromptTimeout)
    assert found[swapped + 1] is RestDoor  # in the same place


def test_without_bentoml_timeout_nothing_is_swapped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert PromptTimeout.install(object()) is False
    assert PromptTimeout.install(Starlette()) is False  # not started
    assert "event=prompt_timeout_unavailable" in caplog.text


class _Slow:
    """An ASGI app that answers after `delay` s, optionally starting at once."""

    def __init__(self, delay: float, *, start_first: bool = False) -> None:
        self.delay = delay
        self.start_first = start_first
        self.cancelled = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": []}
        if self.start_first:
            await send(start)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if not self.start_first:
            await send(start)
        await send({"type": "http.response.body", "body": b"late but whole"})


async def test_no_answer_in_time_is_a_json_504_and_the_app_is_cancelled() -> None:
    slow = _Slow(5)
    async with _client(PromptTimeout(slow, 0.05)) as client:
        answer = await client.get("/")
    assert answer.status_code == 504
    assert answer.json() == {"error": "Not able to process the request in 0.05 seconds"}
    assert slow.cancelled


async def test_an_answer_started_in_time_is_not_cut() -> None:
    slow = _Slow(0.2, start_first=True)
    async with _client(PromptTimeout(slow, 0.05)) as client:
        answer = await client.get("/")
    assert answer.status_code == 200
    assert answer.text == "late but whole"
    assert not slow.cancelled


async def test_the_apps_own_timeout_error_is_not_a_504() -> None:
    async def raises(scope: Scope, receive: Receive, send: Send) -> None:
        raise TimeoutError("the app's own")

    async with _client(PromptTimeout(raises, 5)) as client:
        with pytest.raises(TimeoutError, match="the app's own"):
            await client.get("/")


async def test_a_lifespan_is_not_timed() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.05)  # longer than the timeout
        seen.append(scope["type"])

    await PromptTimeout(app, 0.01)({"type": "lifespan"}, _never, _discard)
    assert seen == ["lifespan"]


async def _never() -> Message:
    await asyncio.sleep(3600)
    raise AssertionError("not reached")


async def _discard(message: Message) -> None:
    pass


async def test_an_app_that_answers_its_own_cancellation_is_heard() -> None:
    async def answers_late(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b"gave up"})

    async with _client(PromptTimeout(answers_late, 0.05)) as client:
        answer = await client.get("/")
    assert (answer.status_code, answer.text) == (503, "gave up")
