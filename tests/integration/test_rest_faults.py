"""The REST door under faults, on a real `bentoml serve`: what a caller sees.

A stalled Redis (our own redis-server, SIGSTOPped), a stored row the model
cannot encode, overload, hostile paths, bodies and content types, a replaced
SQLite store file. Deadlines asserted here are the service's own (the feature
deadline, the 10 s request timeout, /livez within 100 ms P99).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.processes import BentoServer, RedisServer, Workspace, wait_for
from predictflow.data import load_telco
from predictflow.encoding import FEATURES
from predictflow.settings import FeastSettings

GOOD = ["7590-VHVEG", "5575-GNVDE", "3668-QPYBK", "7795-CFOCW", "9237-HQITU"]
#: The feature deadline the stalled-store server runs with (seconds).
FEATURE_DEADLINE = 1.0
#: BentoML's request timeout (service.py `traffic`).
REQUEST_TIMEOUT = 10.0
BAD_ROW_CUSTOMER = "9999-SATELLITE"
JSON = {"content-type": "application/json"}


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# --- a stalled Redis -------------------------------------------------------


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this module's own: it gets paused (never the shared one)."""
    server = RedisServer(tmp_path_factory.mktemp("own-redis"))
    yield server
    os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture(scope="module")
def stall_server(workspace: Workspace, own_redis: RedisServer) -> Iterator[BentoServer]:
    """The service on Feast Redis (our own), with a 1 s feature deadline."""
    redis_env = {
        "PREDICTFLOW_FEAST__ONLINE_STORE": "redis",
        "PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING": own_redis.address,
    }
    workspace.run("bootstrap", extra_env=redis_env)
    srv = BentoServer(
        workspace,
        "stall",
        {
            **redis_env,
            "PREDICTFLOW_SERVING__FEATURE_TIMEOUT_SECONDS": str(FEATURE_DEADLINE),
        },
    ).wait()
    yield srv
    srv.stop()


class Paused:
    """SIGSTOP a process for the duration of a `with` block (SIGCONT after)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> Paused:
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *_: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


async def _timed_post(
    client: httpx.AsyncClient, path: str, body: object
) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    r = await client.post(path, json=body)
    return r, time.perf_counter() - start


async def _livez_samples(url: str, count: int, until: asyncio.Event) -> list[float]:
    samples: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        for _ in range(count):
            start = time.perf_counter()
            r = await client.get("/livez")
            samples.append(time.perf_counter() - start)
            assert r.status_code == 200
            if until.is_set():
                break
            await asyncio.sleep(0.01)
    return samples


async def test_stalled_redis_answers_503_within_the_deadline_livez_stays_fast(
    stall_server: BentoServer, own_redis: RedisServer
) -> None:
    url = stall_server.url
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        warm = await client.post("/predict", json={"customer_id": GOOD[0]})
    assert warm.status_code == 200
    with Paused(own_redis.proc.pid):
        done = asyncio.Event()
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            livez = asyncio.create_task(_livez_samples(url, 300, done))
            replies = await asyncio.gather(
                *(
                    _timed_post(client, "/predict", {"customer_id": GOOD[i % 5]})
                    for i in range(20)
                ),
                _timed_post(
                    client, "/predict_batch", {"requests": [{"customer_id": GOOD[0]}]}
                ),
            )
            # A second wave while the store is still stalled.
            replies += await asyncio.gather(
                *(
                    _timed_post(client, "/predict", {"customer_id": GOOD[i % 5]})
                    for i in range(20)
                )
            )
            done.set()
            samples = await livez
    elapsed = sorted(seconds for _, seconds in replies)
    # The feature deadline, plus scheduling slack: far from the 10 s timeout.
    assert elapsed[-1] < FEATURE_DEADLINE + 2.0, elapsed
    assert len(samples) >= 20
    assert _p99(samples) < 0.1, sorted(samples)[-5:]
    for r, _ in replies:
        assert r.status_code == 503, r.text
        reply = r.json()
        assert reply["error"] == "feature_store_unavailable"
        assert reply["retryable"] is True
        assert r.headers["retry-after"]
        # The internal address stays in the log.
        assert str(own_redis.port) not in r.text
    # Back by itself once Redis answers again.
    wait_for(
        lambda: (
            httpx.post(
                f"{url}/predict", json={"customer_id": GOOD[1]}, timeout=30
            ).status_code
            == 200
        ),
        30,
        "scoring after the stall",
    )
    logs = stall_server.logs()
    assert "event=feature_store_unavailable" in logs
    assert str(own_redis.port) in logs


def test_readiness_follows_the_store_down_and_back(
    stall_server: BentoServer, own_redis: RedisServer
) -> None:
    url = stall_server.url
    assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
    with Paused(own_redis.proc.pid):
        start = time.perf_counter()
        r = httpx.get(f"{url}/readyz", timeout=30)
        assert r.status_code == 503
        assert time.perf_counter() - start < REQUEST_TIMEOUT
    wait_for(
        lambda: httpx.get(f"{url}/readyz", timeout=30).status_code == 200,
        30,
        "ready again after the stall",
    )


# --- a stored row the model cannot encode -------------------------------------


def _write_bad_row(server: BentoServer) -> None:
    """Store a customer whose internet_service is outside the contract (Feast write)."""
    import pandas as pd

    from predictflow.features import open_store

    env = server.env
    settings = FeastSettings(
        repo_path=Path(env["PREDICTFLOW_FEAST__REPO_PATH"]),
        online_store=env.get("PREDICTFLOW_FEAST__ONLINE_STORE", "sqlite"),  # type: ignore[arg-type]
        redis_connection_string=env.get(
            "PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING", "127.0.0.1:6379"
        ),
    )
    row = load_telco().set_index("customer_id").loc[GOOD[0]]
    now = pd.Timestamp.now(tz="UTC")
    frame = pd.DataFrame(
        [
            {
                "customer_id": BAD_ROW_CUSTOMER,
                **{name: row[name] for name in FEATURES},
                "internet_service": "Satellite",
                "event_timestamp": now,
                "created": now,
            }
        ]
    )
    open_store(settings).write_to_online_store("customer_stats_fv", frame)


@pytest.fixture(scope="module")
def api_server(workspace: Workspace) -> Iterator[BentoServer]:
    """The service with the fast path off: BentoML's API handler answers /predict."""
    srv = BentoServer(
        workspace, "api-path", {"PREDICTFLOW_SERVING__FAST_PATH": "false"}
    ).wait()
    yield srv
    srv.stop()


@pytest.fixture(params=["fast-path", "api-path"])
def either_path(request: pytest.FixtureRequest, server: BentoServer) -> BentoServer:
    """The session server (fast path) or the API-path server."""
    if request.param == "fast-path":
        return server
    srv: BentoServer = request.getfixturevalue("api_server")
    return srv


async def test_a_bad_stored_row_fails_only_its_own_request(
    either_path: BentoServer,
) -> None:
    _write_bad_row(either_path)
    ids = [GOOD[i % 5] for i in range(30)]
    ids.insert(13, BAD_ROW_CUSTOMER)
    async with httpx.AsyncClient(base_url=either_path.url, timeout=30) as client:
        replies = await asyncio.gather(
            *(client.post("/predict", json={"customer_id": c}) for c in ids)
        )
        batch = await client.post(
            "/predict_batch",
            json={
                "requests": [
                    {"customer_id": c} for c in (GOOD[0], BAD_ROW_CUSTOMER, GOOD[1])
                ]
            },
        )
    for cid, r in zip(ids, replies, strict=True):
        if cid != BAD_ROW_CUSTOMER:
            assert r.status_code == 200, r.text
            continue
        assert r.status_code == 500
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"] == "internal_error"
        assert r.json()["retryable"] is False
        assert "Satellite" not in r.text and "Traceback" not in r.text
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [x.get("error") for x in results] == [None, "internal_error", None]
    assert "event=scoring_failed" in either_path.logs()


# --- overload --------------------------------------------------------------

#: Closed-loop load from a process of its own (this one samples /livez).
_LOAD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import httpx

    url, out = sys.argv[1], sys.argv[4]
    connections, seconds = int(sys.argv[2]), float(sys.argv[3])
    ids = ["7590-VHVEG", "5575-GNVDE", "3668-QPYBK", "7795-CFOCW", "9237-HQITU"]
    answers = []

    async def user(client, n):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            r = await client.post("/predict", json={"customer_id": ids[n % 5]})
            is_json = r.headers.get("content-type") == "application/json"
            body = r.json() if is_json else {}
            answers.append([r.status_code, time.perf_counter() - start,
                            body.get("error"), body.get("retryable"),
                            r.headers.get("retry-after")])
            n += 1

    async def main():
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            await asyncio.gather(*(user(client, n) for n in range(connections)))
        json.dump(answers, open(out, "w"))

    asyncio.run(main())
    """
)

#: Requests one worker of the overload server holds at once.
IN_FLIGHT = 8


@pytest.fixture(scope="module")
def overload_server(workspace: Workspace) -> Iterator[BentoServer]:
    srv = BentoServer(
        workspace, "overload", {"PREDICTFLOW_SERVING__MAX_IN_FLIGHT": str(IN_FLIGHT)}
    ).wait()
    yield srv
    srv.stop()


def test_overload_is_shed_at_once_and_livez_stays_fast(
    overload_server: BentoServer, tmp_path: Path
) -> None:
    """Far past saturation (16x the in-flight limit): only 200/429/503, in time."""
    out = tmp_path / "answers.json"
    load = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _LOAD,
            overload_server.url,
            str(16 * IN_FLIGHT),
            "6",
            str(out),
        ]
    )
    samples: list[float] = []
    try:
        time.sleep(1.0)  # let the load build up
        with httpx.Client(base_url=overload_server.url, timeout=REQUEST_TIMEOUT) as c:
            for _ in range(150):
                start = time.perf_counter()
                assert c.get("/livez").status_code == 200
                samples.append(time.perf_counter() - start)
                time.sleep(0.02)
    finally:
        assert load.wait(timeout=60) == 0
    answers = json.loads(out.read_text())
    statuses = {status for status, *_ in answers}
    assert statuses <= {200, 429, 503}, statuses
    shed = [a for a in answers if a[0] in (429, 503)]
    assert shed, "nothing was shed"
    for _, _, error, retryable, retry_after in shed:
        assert error == "overloaded" and retryable is True and retry_after
    assert max(elapsed for _, elapsed, *_ in answers) < REQUEST_TIMEOUT
    assert _p99(samples) < 0.1, sorted(samples)[-5:]


# --- hostile paths, bodies and content types -------------------------------


async def _metrics(client: httpx.AsyncClient) -> str:
    return (await client.get("/metrics")).text


def _series(exposition: str) -> set[str]:
    """The series an exposition holds: each sample line without its value."""
    return {
        line.rsplit(" ", 1)[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }


async def test_random_paths_leave_metrics_bounded(api_server: BentoServer) -> None:
    prefixes = ["/", "/static_content/", "/predict/", "/docs.json/"]
    paths = [f"{prefixes[i % 4]}{uuid.uuid4().hex}" for i in range(5000)]
    # One of each first, so every label these paths can take exists already.
    async with httpx.AsyncClient(base_url=api_server.url, timeout=30) as client:
        for path in paths[:4]:
            await client.get(path)
        before = await _metrics(client)
        for start in range(4, len(paths), 50):
            await asyncio.gather(*(client.get(p) for p in paths[start : start + 50]))
        after = await _metrics(client)
    assert paths[-1] not in after
    # The counters of existing series grow, no series is added.
    assert sorted(_series(after) - _series(before)) == []


ROUTES = [
    ("POST", "/predict"),
    ("POST", "/predict_batch"),
    ("GET", "/livez"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/docs.json"),
    ("GET", "/schema.json"),
    ("GET", "/"),
    ("GET", "/static_content/index.css"),
    ("POST", "/no/such/route"),
]
TEN_MB = b"{" + b" " * (10 * 1024 * 1024) + b"}"


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_10_mb_body_is_413_on_every_route(
    api_server: BentoServer, server: BentoServer, method: str, path: str
) -> None:
    for srv in (server, api_server):
        r = httpx.request(
            method, srv.url + path, content=TEN_MB, headers=JSON, timeout=60
        )
        assert r.status_code == 413, (srv.url, r.text[:300])
        assert r.json()["error"] == "request_too_large"


@pytest.mark.parametrize("path", ["/predict", "/predict_batch", "/no/such/route"])
def test_a_10_mb_chunked_body_is_413(api_server: BentoServer, path: str) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * (1024 * 1024)

    r = httpx.post(api_server.url + path, content=chunks(), headers=JSON, timeout=60)
    assert r.status_code == 413, r.text[:300]
    assert r.json()["error"] == "request_too_large"


def _multipart_bodies() -> list[tuple[str, bytes]]:
    many = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i
        for i in range(10_000)
    )
    long = "x" * 5000
    return [
        ("multipart/form-data", b"--b\r\n\r\n--b--\r\n"),
        ("multipart/form-data; boundary=b", many + b"--b--\r\n"),
        (
            f"multipart/form-data; boundary={long}",
            f'--{long}\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n'
            f"--{long}--\r\n".encode(),
        ),
    ]


@pytest.mark.parametrize("path", ["/predict", "/predict_batch"])
def test_multipart_is_4xx(
    api_server: BentoServer, server: BentoServer, path: str
) -> None:
    for srv in (server, api_server):
        for content_type, body in _multipart_bodies():
            r = httpx.post(
                srv.url + path,
                content=body,
                headers={"content-type": content_type},
                timeout=30,
            )
            assert 400 <= r.status_code < 500, (content_type[:40], r.text[:300])


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/vnd.bentoml+pickle",
        "application/xml",
        None,
    ],
)
@pytest.mark.parametrize("path", ["/predict", "/predict_batch"])
def test_a_non_json_content_type_is_415(
    api_server: BentoServer,
    server: BentoServer,
    path: str,
    content_type: str | None,
) -> None:
    body = {"customer_id": GOOD[0]}
    if path == "/predict_batch":
        body = {"requests": [body]}  # type: ignore[dict-item]
    headers = {} if content_type is None else {"content-type": content_type}
    for srv in (server, api_server):
        r = httpx.post(
            srv.url + path, content=json.dumps(body), headers=headers, timeout=30
        )
        assert r.status_code == 415, (content_type, r.text[:300])
        assert r.json()["error"] == "unsupported_media_type"


def test_json_subtypes_are_accepted(server: BentoServer) -> None:
    r = httpx.post(
        server.url + "/predict",
        content=json.dumps({"customer_id": GOOD[0]}),
        headers={"content-type": "application/merge-patch+json; charset=utf-8"},
        timeout=30,
    )
    assert r.status_code == 200, r.text


# --- logs and correlation ids ---------------------------------------------


@pytest.mark.parametrize("fast_path", [True, False])
def test_every_non_2xx_answer_is_logged_once_with_its_request_id(
    api_server: BentoServer, server: BentoServer, fast_path: bool
) -> None:
    srv = server if fast_path else api_server
    given = f"test-{uuid.uuid4().hex}"
    cases = [
        ("/predict", {"customer_id": "bad id"}, 400),
        ("/predict_batch", {"requests": [{"customer_id": "bad id"}]}, 400),
        ("/predict", {"customer_id": "0000-NOBODY"}, 404),
    ]
    for i, (path, body, status) in enumerate(cases):
        rid = f"{given}-{i}"
        r = httpx.post(
            srv.url + path, json=body, headers={"x-request-id": rid}, timeout=30
        )
        assert r.status_code == status, r.text
        assert r.headers["x-request-id"] == rid
    generated = httpx.get(srv.url + "/no-such-path", timeout=30)
    assert len(generated.headers["x-request-id"]) >= 16

    def logged() -> bool:
        return generated.headers["x-request-id"] in srv.logs()

    wait_for(logged, 10, "the 404 log line")
    logs = srv.logs()
    for i, (path, _, status) in enumerate(cases):
        lines = [line for line in logs.splitlines() if f"{given}-{i}" in line]
        assert len(lines) == 1, lines
        assert f"status={status}" in lines[0] and f"path={path}" in lines[0]
    # A client error is one line, not BentoML's traceback.
    assert "Traceback" not in logs


# --- a replaced SQLite store file --------------------------------------------


@pytest.fixture(scope="module")
def sqlite_copy_server(workspace: Workspace) -> Iterator[tuple[BentoServer, Path]]:
    """The service on a copy of the Feast repository, whose store file we replace."""
    repo = workspace.root / "repo-replaced"
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(workspace.root / "feature_repo", repo)
    srv = BentoServer(
        workspace, "sqlite-replaced", {"PREDICTFLOW_FEAST__REPO_PATH": str(repo)}
    ).wait()
    yield srv, repo / "data" / "online_store.db"
    srv.stop()


def test_a_replaced_sqlite_file_is_picked_up(
    sqlite_copy_server: tuple[BentoServer, Path],
) -> None:
    srv, db = sqlite_copy_server
    good = db.with_name("good.db")
    shutil.copy(db, good)
    assert (
        httpx.post(f"{srv.url}/predict", json={"customer_id": GOOD[0]}).status_code
        == 200
    )
    # Another writer moves a file that is no store over it.
    garbage = db.with_name("garbage.db")
    garbage.write_bytes(b"this is not a SQLite database" * 100)
    garbage.replace(db)
    wait_for(
        lambda: httpx.get(f"{srv.url}/readyz", timeout=30).status_code == 503,
        30,
        "not ready on a broken store file",
    )
    r = httpx.post(f"{srv.url}/predict", json={"customer_id": GOOD[0]}, timeout=30)
    assert r.status_code == 503 and r.json()["error"] == "feature_store_unavailable"
    assert str(db) not in r.text
    # A good store file moved in: ready and scoring again, no restart.
    good.replace(db)
    wait_for(
        lambda: httpx.get(f"{srv.url}/readyz", timeout=30).status_code == 200,
        30,
        "ready again on a good store file",
    )
    r = httpx.post(f"{srv.url}/predict", json={"customer_id": GOOD[0]}, timeout=30)
    assert r.status_code == 200, r.text
