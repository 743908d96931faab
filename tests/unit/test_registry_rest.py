"""The MLflow REST alias lookup reads MLflow's own client variables."""

from __future__ import annotations

import httpx

from predictflow.registry_rest import client_options, speaks_rest


def test_only_plain_servers_are_asked_over_rest() -> None:
    assert speaks_rest("http://mlflow:5000", env={})
    assert speaks_rest("https://mlflow.example", env={})
    assert not speaks_rest("sqlite:///var/mlflow.db", env={})
    assert not speaks_rest("databricks", env={})
    # An auth plugin only the MLflow client can run.
    assert not speaks_rest("https://m", env={"MLFLOW_TRACKING_AUTH": "oauth"})


def test_basic_auth_wins_over_a_token_as_in_mlflow() -> None:
    both = client_options(
        {
            "MLFLOW_TRACKING_USERNAME": "u",
            "MLFLOW_TRACKING_PASSWORD": "p",
            "MLFLOW_TRACKING_TOKEN": "t",
        }
    )
    assert isinstance(both["auth"], httpx.BasicAuth)
    assert "headers" not in both
    token = client_options(
        {"MLFLOW_TRACKING_USERNAME": "u", "MLFLOW_TRACKING_TOKEN": "t"}
    )
    assert token["headers"] == {"Authorization": "Bearer t"}
    assert "auth" not in token


def test_tls_options_follow_mlflow_variables() -> None:
    assert client_options({}) == {}
    insecure = client_options(
        {
            "MLFLOW_TRACKING_INSECURE_TLS": "true",
            "MLFLOW_TRACKING_SERVER_CERT_PATH": "ca",
        }
    )
    assert insecure["verify"] is False
    pinned = client_options(
        {
            "MLFLOW_TRACKING_SERVER_CERT_PATH": "/ca.pem",
            "MLFLOW_TRACKING_CLIENT_CERT_PATH": "/me.pem",
        }
    )
    assert pinned == {"verify": "/ca.pem", "cert": "/me.pem"}
