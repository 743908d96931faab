"""POST /predict and /predict_batch on a real `bentoml serve`, per online store."""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.processes import BentoServer, Workspace
from predictflow.contract import ChurnRequest, ChurnScore
from predictflow.data import load_telco
from predictflow.encoding import FEATURES
from predictflow.model import ChurnModel
from predictflow.scoring import Scorer

KNOWN = ["7590-VHVEG", "5575-GNVDE", "3668-QPYBK", "7795-CFOCW", "9237-HQITU"]


class TelcoFeatures:
    """Features straight from the committed CSV: the offline source of truth."""

    def __init__(self) -> None:
        df = load_telco().set_index("customer_id")
        self.rows = {cid: {f: row[f] for f in FEATURES} for cid, row in df.iterrows()}

    def get(self, customer_ids: Sequence[str]) -> list[Mapping[str, object] | None]:
        return [self.rows.get(c) for c in customer_ids]


@pytest.fixture(scope="module")
def offline_scorer(workspace: Workspace) -> Scorer:
    """The champion loaded from the MLflow registry, features from the CSV."""
    import mlflow
    import mlflow.xgboost

    mlflow.set_tracking_uri(f"sqlite:///{workspace.root / 'var' / 'mlflow.db'}")
    booster = mlflow.xgboost.load_model("models:/churn-predictor@champion")
    return Scorer(TelcoFeatures(), ChurnModel(booster, "offline"))


def predict(server: BentoServer, body: object) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", json=body, timeout=30)


def reuse_after_idle(url: str, idle_s: float) -> str | None:
    """Send a request, idle `idle_s`, send another on the same connection.

    None when both are answered; else what the second one ran into (the
    server closed the connection while it was idle).
    """
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body, headers = (
        '{"customer_id": "7590-VHVEG"}',
        {"Content-Type": "application/json"},
    )
    try:
        conn.request("POST", "/predict", body, headers)
        first = conn.getresponse()
        first.read()
        assert first.status == 200, first.status
        sock = conn.sock
        time.sleep(idle_s)
        conn.request("POST", "/predict", body, headers)
        assert conn.sock is sock, "http.client opened a new connection"
        second = conn.getresponse()
        second.read()
        return None if second.status == 200 else f"HTTP {second.status}"
    except (http.client.HTTPException, OSError) as exc:
        return repr(exc)
    finally:
        conn.close()


def test_an_idle_keep_alive_connection_outlasts_uvicorns_default(
    server: BentoServer,
) -> None:
    # uvicorn closes idle connections after 5 s unless told otherwise; a
    # client or proxy that keeps them longer (nginx and AWS ALB: 60 s) then
    # sends on a connection the server is closing, and the request is reset.
    assert reuse_after_idle(server.url, idle_s=6.5) is None


def test_real_customers_get_probabilities(server: BentoServer) -> None:
    for cid in KNOWN:
        r = predict(server, {"customer_id": cid})
        assert r.status_code == 200, r.text
        score = ChurnScore.model_validate_json(r.text)
        assert score.customer_id == cid
        assert 0.0 <= score.churn_probability <= 1.0
        assert score.model_version.startswith("churn-predictor:")


def test_rest_equals_the_offline_scorer(
    server: BentoServer, offline_scorer: Scorer
) -> None:
    ids = list(offline_scorer.features.rows)[:200:7]  # type: ignore[attr-defined]
    requests = [ChurnRequest(customer_id=c) for c in ids]
    expected = offline_scorer.score(requests, source="offline")
    body = {"requests": [{"customer_id": c} for c in ids]}
    r = httpx.post(f"{server.url}/predict_batch", json=body, timeout=30)
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    assert len(got) == len(expected) == len(ids)
    for g, e in zip(got, expected, strict=True):
        assert isinstance(e, ChurnScore)
        assert g["customer_id"] == e.customer_id
        assert abs(g["churn_probability"] - e.churn_probability) <= 1e-6


def test_overrides_change_the_score_as_the_offline_scorer_does(
    server: BentoServer, offline_scorer: Scorer
) -> None:
    body = {"customer_id": "5575-GNVDE", "contract": "Month-to-month", "tenure": 2}
    r = predict(server, body)
    assert r.status_code == 200, r.text
    (expected,) = offline_scorer.score([ChurnRequest(**body)], source="offline")  # type: ignore[arg-type]
    assert isinstance(expected, ChurnScore)
    assert abs(r.json()["churn_probability"] - expected.churn_probability) <= 1e-6
    plain = predict(server, {"customer_id": "5575-GNVDE"}).json()
    assert r.json()["churn_probability"] > plain["churn_probability"]


def test_unknown_customer_is_404_with_a_json_error(server: BentoServer) -> None:
    r = predict(server, {"customer_id": "0000-NOBODY"})
    assert r.status_code == 404
    assert r.json()["error"] == "unknown_customer"
    assert r.json()["customer_id"] == "0000-NOBODY"


def test_unknown_customer_with_every_feature_is_scored(server: BentoServer) -> None:
    features = TelcoFeatures().rows["7590-VHVEG"]
    r = predict(server, {"customer_id": "9999-BRANDNEW", **features})
    assert r.status_code == 200, r.text
    known = predict(server, {"customer_id": "7590-VHVEG"}).json()
    assert abs(r.json()["churn_probability"] - known["churn_probability"]) <= 1e-6


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"customer_id": "7590-VHVEG", "tenure": "ten"},
        {"customer_id": "7590-VHVEG", "tenure": -5},
        {"customer_id": "7590-VHVEG", "contract": "Weekly"},
        {"customer_id": "7590-VHVEG", "surprise": True},
        {"customer_id": "bad id with spaces"},
        ["7590-VHVEG"],
    ],
)
def test_invalid_input_is_4xx_with_field_errors(
    server: BentoServer, body: object
) -> None:
    r = predict(server, body)
    assert 400 <= r.status_code < 500, r.text
    payload = r.json()
    assert payload["error"]
    if isinstance(body, dict) and body:
        assert payload["detail"], payload


def test_malformed_json_is_4xx(server: BentoServer) -> None:
    r = httpx.post(
        f"{server.url}/predict",
        content=b'{"customer_id": ',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert 400 <= r.status_code < 500, r.text


def test_batch_keeps_order_and_reports_each_unknown(server: BentoServer) -> None:
    body = {"requests": [{"customer_id": c} for c in ("7590-VHVEG", "NOPE", KNOWN[1])]}
    r = httpx.post(f"{server.url}/predict_batch", json=body, timeout=30)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["customer_id"] for x in results] == ["7590-VHVEG", "NOPE", KNOWN[1]]
    assert "churn_probability" in results[0]
    assert results[1]["error"] == "unknown_customer"


def test_batch_over_the_configured_limit_is_413(server: BentoServer) -> None:
    body = {"requests": [{"customer_id": "7590-VHVEG"}] * 257}
    r = httpx.post(f"{server.url}/predict_batch", json=body, timeout=30)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "batch_too_large"


def _samples(
    server: BentoServer,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_what_was_served(server: BentoServer) -> None:
    scored = (
        "predictflow_predictions_total",
        (("outcome", "scored"), ("source", "rest")),
    )
    unknown = (
        "predictflow_predictions_total",
        (("outcome", "unknown_customer"), ("source", "rest")),
    )
    fetches = ("predictflow_feature_fetch_seconds_count", ())
    before = _samples(server)
    for cid in KNOWN[:3]:
        assert predict(server, {"customer_id": cid}).status_code == 200
    assert predict(server, {"customer_id": "NOPE"}).status_code == 404
    after = _samples(server)
    assert after[scored] - before.get(scored, 0.0) == 3
    assert after[unknown] - before.get(unknown, 0.0) == 1
    assert after[fetches] - before.get(fetches, 0.0) == 4
    assert after[("predictflow_churn_probability_count", ())] >= 3
    versions = [
        dict(labels)["model_version"]
        for (name, labels), value in after.items()
        if name == "predictflow_model_info" and value == 1
    ]
    assert versions and versions[0].startswith("churn-predictor:")


async def test_concurrent_requests_each_get_their_own_reply(
    server: BentoServer,
) -> None:
    """The micro-batcher scores concurrent requests together, replies stay apart."""
    ids = [*KNOWN, "0000-NOBODY"] * 8
    expected = {cid: predict(server, {"customer_id": cid}).json() for cid in set(ids)}
    before = _samples(server)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        replies = await asyncio.gather(
            *(client.post("/predict", json={"customer_id": cid}) for cid in ids)
        )
    assert [r.json() for r in replies] == [expected[cid] for cid in ids]
    assert [r.status_code for r in replies] == [
        404 if cid == "0000-NOBODY" else 200 for cid in ids
    ]
    after = _samples(server)
    size_sum = ("predictflow_batch_size_sum", (("source", "rest"),))
    size_count = ("predictflow_batch_size_count", (("source", "rest"),))
    assert after[size_sum] - before[size_sum] == len(ids)
    assert 1 <= after[size_count] - before[size_count] <= len(ids)


@pytest.fixture(scope="module")
def framework_path_server(workspace: Workspace) -> Iterator[BentoServer]:
    """The service with the fast path off (BentoML's API handler), two workers."""
    srv = BentoServer(
        workspace,
        "framework-path",
        extra_env={
            "PREDICTFLOW_SERVING__FAST_PATH": "false",
            "PREDICTFLOW_SERVING__WORKERS": "2",
        },
    ).wait()
    yield srv
    srv.stop()


@pytest.mark.parametrize(
    "body",
    [
        {"customer_id": "7590-VHVEG"},
        {"customer_id": "7590-VHVEG", "tenure": 3, "contract": "Two year"},
        {"customer_id": "0000-NOBODY"},
        {"customer_id": "7590-VHVEG", "tenure": "ten"},
        {"customer_id": "7590-VHVEG", "surprise": True},
        {},
    ],
)
def test_fast_path_answers_as_the_bentoml_api_does(
    server: BentoServer, framework_path_server: BentoServer, body: object
) -> None:
    fast = predict(server, body)
    framework = predict(framework_path_server, body)
    assert fast.status_code == framework.status_code, (fast.text, framework.text)
    if fast.status_code == 400:
        # Same shape; BentoML names the model of its IO descriptor.
        def fields(r: httpx.Response) -> list[tuple[object, object]]:
            return [(e["loc"], e["type"]) for e in r.json()["detail"]]

        assert fields(fast) == fields(framework)
        assert fast.json()["error"].startswith(str(len(fields(fast))))
    else:
        assert fast.json() == framework.json()


def test_two_workers_serve_and_report_together(
    framework_path_server: BentoServer,
) -> None:
    """Two worker processes; /metrics sums what both served."""
    workers = [
        p
        for p in psutil.Process(framework_path_server.proc.pid).children(recursive=True)
        if "--worker-id" in p.cmdline()
    ]
    assert len(workers) == 2
    scored = (
        "predictflow_predictions_total",
        (("outcome", "scored"), ("source", "rest")),
    )
    before = _samples(framework_path_server).get(scored, 0.0)
    for cid in KNOWN * 4:
        assert predict(framework_path_server, {"customer_id": cid}).status_code == 200
    assert _samples(framework_path_server)[scored] - before == len(KNOWN) * 4


def test_the_request_timeout_leaves_no_timer_behind(server: BentoServer) -> None:
    """The door found BentoML's timeout middleware in the real stack and swapped it.

    BentoML's own keeps a timer per request for the whole timeout; at
    saturation full collections walking them tripled the P99
    (`rest.bentoml_fit.PromptTimeout`). When the swap fails, the worker says so.
    """
    assert predict(server, {"customer_id": KNOWN[0]}).status_code == 200
    assert "event=prompt_timeout_unavailable" not in server.logs()
    assert "event=service_loaded" in server.logs()  # the log is the worker's
