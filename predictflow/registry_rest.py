"""Ask an MLflow server which version an alias names, without importing MLflow.

Importing the MLflow client costs a serving process about 1.8 s of CPU
(tracing, tracking, GenAI modules), most of it holding the GIL: every
request in flight in that process waits. The model follower asks the
registry every `model.refresh_seconds`, and only a moved alias needs the
client (to download the new version). Against an MLflow server (`http(s)://`
tracking URI, as in Compose and Kubernetes) this module asks over MLflow's
REST API instead, with the credentials and TLS settings the MLflow client
reads from the same environment variables. Other stores (the embedded SQLite
default, Databricks, an auth plugin) keep the MLflow client.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import httpx

#: MLflow's REST route for `MlflowClient.get_model_version_by_alias`.
ALIAS_ROUTE = "/api/2.0/mlflow/registered-models/alias"

#: Error codes that mean "no such model or alias (yet)", as MLflow's client
#: treats them: keep serving what is served.
NOT_THERE = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


class RegistryError(RuntimeError):
    """The registry answered with an error other than "no such alias"."""


def speaks_rest(uri: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether `uri` is an MLflow server this module can ask by itself.

    Not when `MLFLOW_TRACKING_AUTH` names an auth plugin: only the MLflow
    client can run it.
    """
    env = os.environ if env is None else env
    return uri.startswith(("http://", "https://")) and not env.get(
        "MLFLOW_TRACKING_AUTH"
    )


def client_options(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """httpx options from MLflow's own client variables (auth, TLS)."""
    env = os.environ if env is None else env
    options: dict[str, Any] = {}
    user = env.get("MLFLOW_TRACKING_USERNAME")
    password = env.get("MLFLOW_TRACKING_PASSWORD")
    token = env.get("MLFLOW_TRACKING_TOKEN")
    # MLflow's own order: basic auth when both parts are set, else the token.
    if user and password:
        options["auth"] = httpx.BasicAuth(user, password)
    elif token:
        options["headers"] = {"Authorization": f"Bearer {token}"}
    if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        options["verify"] = False
    elif env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        options["verify"] = env["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    if env.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        options["cert"] = env["MLFLOW_TRACKING_CLIENT_CERT_PATH"]
    return options


class AliasClient:
    """One connection to an MLflow server, asking where an alias points."""

    def __init__(
        self, uri: str, *, timeout: float, env: Mapping[str, str] | None = None
    ) -> None:
        self._http = httpx.Client(
            base_url=uri.rstrip("/"), timeout=timeout, **client_options(env)
        )

    def version(self, name: str, alias: str) -> str | None:
        """The version `alias` names, or None when the model or alias is unknown."""
        response = self._http.get(ALIAS_ROUTE, params={"name": name, "alias": alias})
        if response.status_code == httpx.codes.OK:
            return str(response.json()["model_version"]["version"])
        try:
            code = response.json().get("error_code")
        except ValueError:
            code = None
        if code in NOT_THERE:
            return None
        raise RegistryError(
            f"{ALIAS_ROUTE} answered {response.status_code} {code or ''}".rstrip()
        )

    def close(self) -> None:
        """Close the connection."""
        self._http.close()
