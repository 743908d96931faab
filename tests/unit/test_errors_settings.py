from __future__ import annotations

from http import HTTPStatus

import pytest
from pydantic import ValidationError

from predictflow.errors import (
    BatchTooLarge,
    FeatureStoreUnavailable,
    UnknownCustomer,
    http_status,
)
from predictflow.settings import Settings


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnknownCustomer("x", customer_id="c"), HTTPStatus.NOT_FOUND),
        (FeatureStoreUnavailable("x"), HTTPStatus.SERVICE_UNAVAILABLE),
        (BatchTooLarge("x"), HTTPStatus.REQUEST_ENTITY_TOO_LARGE),
    ],
)
def test_errors_map_to_http_status_through_their_reply(
    error: UnknownCustomer, status: HTTPStatus
) -> None:
    reply = error.to_reply()
    assert http_status(reply.error) == status
    assert reply.message == "x"


def test_unknown_code_is_a_server_error() -> None:
    assert http_status("internal_error") == HTTPStatus.INTERNAL_SERVER_ERROR


def test_nested_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREDICTFLOW_FEAST__ONLINE_STORE", "redis")
    monkeypatch.setenv("PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING", "10.0.0.1:6380")
    monkeypatch.setenv("PREDICTFLOW_SERVING__MAX_BATCH_SIZE", "8")
    s = Settings()
    assert s.feast.online_store == "redis"
    assert s.feast.redis_connection_string.get_secret_value() == "10.0.0.1:6380"
    assert s.serving.max_batch_size == 8


def test_tracking_uri_defaults_to_sqlite_in_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PREDICTFLOW_DATA_DIR", str(tmp_path))
    assert Settings().tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert Settings().tracking_uri == "http://mlflow:5000"


def test_production_refuses_embedded_store_and_floating_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREDICTFLOW_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="ONLINE_STORE=redis"):
        Settings()
    monkeypatch.setenv("PREDICTFLOW_FEAST__ONLINE_STORE", "redis")
    with pytest.raises(ValidationError, match="MODEL_TAG"):
        Settings()
    monkeypatch.setenv("PREDICTFLOW_SERVING__MODEL_TAG", "churn-predictor:3")
    monkeypatch.setenv("PREDICTFLOW_AUTH__TOKENS_FILE", "/etc/predictflow/tokens")
    assert Settings().serving.model_tag == "churn-predictor:3"


def test_bentofile_pins_exactly_the_project_dependencies() -> None:
    import tomllib

    import yaml

    from predictflow.settings import PROJECT_ROOT

    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    bentofile = yaml.safe_load((PROJECT_ROOT / "bentofile.yaml").read_text())
    assert bentofile["python"]["packages"] == pyproject["project"]["dependencies"]
    assert bentofile["service"] == "service:ChurnPredictor"


def test_redis_client_options_are_added_unless_the_string_sets_them() -> None:
    from predictflow.features import redis_connection
    from predictflow.settings import FeastSettings

    plain = FeastSettings(redis_connection_string="redis:6379,db=1")
    assert redis_connection(plain) == (
        "redis:6379,db=1,socket_connect_timeout=1,socket_timeout=1,retry=null"
    )
    own = FeastSettings(redis_connection_string="redis:6379,socket_timeout=5")
    assert redis_connection(own) == (
        "redis:6379,socket_timeout=5,socket_connect_timeout=1,retry=null"
    )


def test_production_refuses_to_serve_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDICTFLOW_ENV", "production")
    monkeypatch.setenv("PREDICTFLOW_FEAST__ONLINE_STORE", "redis")
    monkeypatch.setenv("PREDICTFLOW_SERVING__MODEL_TAG", "churn-predictor:3")
    with pytest.raises(ValidationError, match="TOKENS_FILE"):
        Settings()
    monkeypatch.setenv("PREDICTFLOW_AUTH__TOKENS_FILE", "/etc/predictflow/tokens")
    assert Settings().environment == "production"


def test_production_refuses_plaintext_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDICTFLOW_ENV", "production")
    monkeypatch.setenv("PREDICTFLOW_FEAST__ONLINE_STORE", "redis")
    monkeypatch.setenv("PREDICTFLOW_SERVING__MODEL_TAG", "churn-predictor:3")
    monkeypatch.setenv("PREDICTFLOW_AUTH__TOKENS_FILE", "/etc/predictflow/tokens")
    monkeypatch.setenv("PREDICTFLOW_KAFKA__BOOTSTRAP_SERVERS", "kafka:9093")
    with pytest.raises(ValidationError, match="SECURITY_PROTOCOL=SASL_SSL"):
        Settings()
    monkeypatch.setenv("PREDICTFLOW_KAFKA__SECURITY_PROTOCOL", "SSL")
    assert Settings().kafka.security_protocol == "SSL"


def test_the_redis_password_never_shows_in_a_settings_dump(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from predictflow.features import redis_connection

    monkeypatch.setenv(
        "PREDICTFLOW_FEAST__REDIS_CONNECTION_STRING",
        "redis:6379,password=hunter3-secret",
    )
    settings = Settings()
    assert "hunter3-secret" not in settings.model_dump_json()
    assert "hunter3-secret" not in repr(settings)
    assert "password=hunter3-secret" in redis_connection(settings.feast)


def test_the_kafka_password_never_shows_in_a_settings_dump(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREDICTFLOW_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("PREDICTFLOW_KAFKA__SASL_USERNAME", "predictflow")
    monkeypatch.setenv("PREDICTFLOW_KAFKA__SASL_PASSWORD", "hunter2-secret")
    settings = Settings()
    assert "hunter2-secret" not in settings.model_dump_json()
    assert "hunter2-secret" not in repr(settings)
    from consumers.security import client_security

    args = client_security(settings.kafka)
    assert args["sasl_plain_password"] == "hunter2-secret"  # noqa: S105


def test_sasl_needs_a_login(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDICTFLOW_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValidationError, match="sasl_username"):
        Settings()


def test_a_zombie_transaction_times_out_before_its_partitions_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREDICTFLOW_KAFKA__TRANSACTION_TIMEOUT_MS", "20000")
    with pytest.raises(ValidationError, match="session_timeout_ms"):
        Settings()


def test_heartbeats_come_at_least_three_times_a_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().kafka.heartbeat_interval_ms == 500
    monkeypatch.setenv("PREDICTFLOW_KAFKA__HEARTBEAT_INTERVAL_MS", "4000")
    with pytest.raises(ValidationError, match="heartbeat_interval_ms"):
        Settings()
