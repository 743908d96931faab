"""The service image (`make image`) started as a container, as a user runs it.

Collected only by the container suite (`make test-containers`). The image runs
on the host's network on a free loopback port with nothing mounted: the model
and the SQLite feature store must be inside it. Its answers over REST and
Kafka must equal the offline scorer's: the champion from the MLflow registry,
features straight from the CSV.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import yaml

from devtools.processes import ROOT, Workspace, free_port
from devtools.topics import Topics
from predictflow.contract import ChurnRequest, ChurnScore
from predictflow.model import ChurnModel
from predictflow.scoring import Scorer
from tests.containers.support import host_container, image, logs, running
from tests.integration.test_rest import KNOWN, TelcoFeatures, reuse_after_idle
from tests.kafka_support import publish, read_all

#: Where `bentoml containerize` puts the bento inside the image.
BENTO = "/home/bentoml/bento"


@dataclass
class Service:
    """The running service container."""

    url: str
    container: object
    cold_start_s: float

    def exec(self, *argv: str) -> tuple[int, str]:
        result = self.container.exec(list(argv))  # type: ignore[attr-defined]
        return int(result.exit_code), result.output.decode(errors="replace")


@pytest.fixture(scope="module")
def offline_scorer(workspace: Workspace) -> Scorer:
    """The champion loaded from the MLflow registry, features from the CSV."""
    import mlflow
    import mlflow.xgboost

    mlflow.set_tracking_uri(f"sqlite:///{workspace.root / 'var' / 'mlflow.db'}")
    booster = mlflow.xgboost.load_model("models:/churn-predictor@champion")
    return Scorer(TelcoFeatures(), ChurnModel(booster, "offline"))


@pytest.fixture(scope="module")
def image_topics(kafka_bootstrap: str) -> Topics:
    return Topics.fresh("image", kafka_bootstrap)


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, image_topics: Topics) -> Iterator[Service]:
    """`docker run --network host <image>` with a port and the Kafka topics."""
    port = free_port()
    container = host_container(
        image("service"),
        env={
            "BENTOML_HOST": "127.0.0.1",
            "BENTOML_PORT": str(port),
            **image_topics.env(kafka_bootstrap),
        },
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200

    started = time.monotonic()
    with running(container, ready, what=f"service image {image('service')}"):
        yield Service(url, container, time.monotonic() - started)


def test_it_starts_and_answers_ready(
    service: Service, request: pytest.FixtureRequest
) -> None:
    assert httpx.get(f"{service.url}/livez", timeout=5).status_code == 200
    assert httpx.get(f"{service.url}/readyz", timeout=5).status_code == 200
    request.node.user_properties.append(
        (
            "figure",
            f"[image] {image('service')}: container created, started and ready "
            f"in {service.cold_start_s:.1f}s",
        )
    )


def test_it_keeps_idle_connections_past_uvicorns_default(service: Service) -> None:
    # The image's default arguments (deploy/bento/Dockerfile.j2), not
    # uvicorn's 5 s: see tests/integration/test_rest.py.
    assert reuse_after_idle(service.url, idle_s=6.5) is None


def test_it_runs_as_the_non_root_user_the_manifests_expect(service: Service) -> None:
    manifest = yaml.safe_load(
        (ROOT / "k8s" / "base" / "deployment-stable.yaml").read_text()
    )
    pod = manifest["spec"]["template"]["spec"]["securityContext"]
    code, uid = service.exec("id", "-u")
    assert code == 0, uid
    assert int(uid) != 0, "the service runs as root"
    assert int(uid) == pod["runAsUser"], (uid, pod)
    code, gid = service.exec("id", "-g")
    assert int(gid) == pod["runAsGroup"], (gid, pod)


def test_it_carries_the_model_and_the_feature_store(service: Service) -> None:
    code, out = service.exec(
        "sh",
        "-c",
        f"ls {BENTO}/models/churn-predictor/*/mlflow_model/MLmodel "
        f"{BENTO}/src/feature_repo/data/registry.db "
        f"{BENTO}/src/feature_repo/data/online_store.db",
    )
    assert code == 0, f"the image lacks the model or the feature store:\n{out}"


def test_rest_scores_equal_the_offline_scorer(
    service: Service, offline_scorer: Scorer
) -> None:
    for cid in KNOWN:
        r = httpx.post(f"{service.url}/predict", json={"customer_id": cid}, timeout=30)
        assert r.status_code == 200, f"{r.text}\n{logs(service.container)}"  # type: ignore[arg-type]
        got = ChurnScore.model_validate_json(r.text)
        (expected,) = offline_scorer.score([ChurnRequest(customer_id=cid)], "offline")
        assert isinstance(expected, ChurnScore)
        assert got.customer_id == cid
        assert got.model_version.startswith("churn-predictor:")
        assert abs(got.churn_probability - expected.churn_probability) <= 1e-6

    ids = list(offline_scorer.features.rows)[:300:11]  # type: ignore[attr-defined]
    expected_batch = offline_scorer.score(
        [ChurnRequest(customer_id=c) for c in ids], source="offline"
    )
    body = {"requests": [{"customer_id": c} for c in ids]}
    r = httpx.post(f"{service.url}/predict_batch", json=body, timeout=60)
    assert r.status_code == 200, r.text
    for g, e in zip(r.json()["results"], expected_batch, strict=True):
        assert isinstance(e, ChurnScore)
        assert g["customer_id"] == e.customer_id
        assert abs(g["churn_probability"] - e.churn_probability) <= 1e-6


def test_kafka_replies_equal_the_offline_scorer(
    service: Service,
    kafka_bootstrap: str,
    image_topics: Topics,
    offline_scorer: Scorer,
) -> None:
    sent = asyncio.run(publish(kafka_bootstrap, image_topics.request, KNOWN))
    replies = asyncio.run(
        read_all(kafka_bootstrap, image_topics.reply, until=set(sent.records))
    )
    missing = set(sent.records) - set(replies)
    assert not missing, f"no reply to {len(missing)} requests:\n" + logs(
        service.container  # type: ignore[arg-type]
    )
    rest_version = httpx.post(
        f"{service.url}/predict", json={"customer_id": KNOWN[0]}, timeout=30
    ).json()["model_version"]
    for correlation_id, (customer_id, _, _) in sent.records.items():
        body, headers = replies[correlation_id][0]
        score = ChurnScore.model_validate(body)
        (expected,) = offline_scorer.score(
            [ChurnRequest(customer_id=customer_id)], "offline"
        )
        assert isinstance(expected, ChurnScore)
        assert score.customer_id == customer_id
        assert headers["model_version"].decode() == score.model_version == rest_version
        assert abs(score.churn_probability - expected.churn_probability) <= 1e-6


def test_unknown_customer_is_404(service: Service) -> None:
    r = httpx.post(
        f"{service.url}/predict", json={"customer_id": "0000-NOBODY"}, timeout=30
    )
    assert r.status_code == 404, r.text
    assert r.json()["error"] == "unknown_customer"


def test_prometheus_scrapes_the_service(
    service: Service, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The local Prometheus image scrapes the container's /metrics."""
    config_dir = tmp_path_factory.mktemp("prometheus")
    config_dir.chmod(0o755)
    config = config_dir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "churn-predictor",
                        "static_configs": [
                            {"targets": [service.url.removeprefix("http://")]}
                        ],
                    }
                ],
            }
        )
    )
    config.chmod(0o644)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    prometheus = host_container(
        image("prometheus"),
        command=[
            "--config.file=/etc/prometheus/prometheus.yml",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
    ).with_volume_mapping(str(config), "/etc/prometheus/prometheus.yml", "ro")

    def ready() -> bool:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200

    query = 'predictflow_model_info{job="churn-predictor"} == 1'
    with running(prometheus, ready, what="Prometheus container"):
        deadline = time.monotonic() + 60
        result: list[dict[str, object]] = []
        while time.monotonic() < deadline and not result:
            r = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=5)
            assert r.status_code == 200, r.text
            result = r.json()["data"]["result"]
            time.sleep(0.5)
        assert result, f"Prometheus never scraped the service:\n{logs(prometheus)}"
        (series,) = result
        version = series["metric"]["model_version"]  # type: ignore[index]
        assert str(version).startswith("churn-predictor:")
