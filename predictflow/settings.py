"""Runtime configuration: one `Settings`, read from `PREDICTFLOW_*` variables.

Nested parts use `__`: `PREDICTFLOW_FEAST__ONLINE_STORE=redis`. Nothing reads
settings at import time; call `get_settings()` (cached; tests call
`get_settings.cache_clear()` after changing the environment).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from predictflow.contract import MAX_BATCH_SIZE

# KafkaSettings is part of this module's face (`Settings.kafka`).
from predictflow.kafka_settings import KafkaSettings as KafkaSettings
from predictflow.kafka_settings import check_kafka

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class MlflowSettings(BaseModel):
    """Where models are tracked and registered."""

    tracking_uri: str | None = Field(
        default=None,
        description=(
            "MLflow tracking URI. Unset: `MLFLOW_TRACKING_URI` if set, else a SQLite "
            "store `mlflow.db` in the data directory."
        ),
    )
    experiment: str = Field(default="churn", description="MLflow experiment name.")
    model_name: str = Field(
        default="churn-predictor", description="Registered model name."
    )
    champion_alias: str = Field(
        default="champion", description="Alias of the version that serves."
    )


class FeastSettings(BaseModel):
    """Where features are read from."""

    repo_path: Path = Field(
        default=PROJECT_ROOT / "feature_repo",
        description="Feast repository (feature definitions).",
    )
    online_store: Literal["sqlite", "redis"] = Field(
        default="sqlite",
        description="Online store: embedded SQLite, or Redis for production.",
    )
    redis_connection_string: SecretStr = Field(
        default=SecretStr("127.0.0.1:6379"),
        description=(
            "Feast Redis connection string, `host:port[,db=0,password=...]`; "
            "secret, since it may hold the password."
        ),
    )
    redis_client_options: str = Field(
        default="socket_connect_timeout=1,socket_timeout=1,retry=null",
        description=(
            "redis-py options added to the connection string unless it sets them. "
            "The default fails a read in about a second when Redis is down; "
            "redis-py's own default retries with backoff for up to ~10 s, past "
            "the service's request timeout."
        ),
    )
    feature_service: str = Field(
        default="churn_model_v1", description="Feast FeatureService the model reads."
    )
    sqlite_prefetch: bool = Field(
        default=True,
        description=(
            "Once the SQLite online store has answered its first read, have the "
            "kernel read its file into the page cache in the background (Linux; "
            "the kernel keeps what fits in memory, but reads it all: turn it off "
            "when the file is much larger than the memory the host can spare). "
            "Without it, a customer whose pages are not cached waits on the disk."
        ),
    )


class ServingSettings(BaseModel):
    """How the service serves."""

    model_tag: str = Field(
        default="churn-predictor:latest",
        description="Bento store tag of the model to serve (pin a version in prod).",
    )
    max_batch_size: int = Field(
        default=256,
        ge=1,
        le=MAX_BATCH_SIZE,
        description="Most customers one `/predict_batch` call may score.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Worker processes of `bentoml serve` (one per core you give it).",
    )
    fast_path: bool = Field(
        default=True,
        description=(
            "Serve POST /predict from the service's ASGI middleware (same contract,"
            " less per-request framework work); false routes it through BentoML's"
            " API handler."
        ),
    )
    trace_scoring: bool = Field(
        default=False,
        description=(
            "Open a tracing span for each /predict and /predict_batch request;"
            " off saves CPU on every request (turn on with a tracing exporter)."
        ),
    )
    micro_batch_max: int = Field(
        default=64,
        ge=1,
        le=1000,
        description="Most concurrent /predict requests scored in one batch.",
    )
    max_in_flight: int = Field(
        default=512,
        ge=1,
        description=(
            "Most scoring requests one worker holds at once (being read, queued "
            "or scored); past it a request is refused at once with 503 and "
            "`Retry-After` instead of queueing until the request timeout."
        ),
    )
    feature_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=9,
        description=(
            "Deadline of one online feature read (off the event loop); past it "
            "the requests waiting on it get 503. Shorter than the 10 s request "
            "timeout, so a stalled store answers 503, not a timeout."
        ),
    )
    max_queued_customers: int = Field(
        default=4096,
        ge=1,
        description=(
            "Most customers (of /predict and /predict_batch together) waiting for "
            "one worker's scoring thread; past it a request gets 503 overloaded "
            "at once. Each waits at most feature_timeout_seconds."
        ),
    )
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest request body read on any route (413 past it). A full "
            "`/predict_batch` of 1,000 customers is ~0.6 MB."
        ),
    )


class ModelSettings(BaseModel):
    """Which registered model version serves, and how often that is checked."""

    alias: str = Field(
        default="champion",
        description=(
            "MLflow alias this process follows: `champion` on stable pods, "
            "`challenger` on canary pods."
        ),
    )
    refresh_seconds: float = Field(
        default=30.0,
        ge=0,
        description=(
            "How often the registry is asked which version the alias names; a "
            "new one is loaded, validated and swapped in without a restart. "
            "0: serve the Bento-store model only."
        ),
    )


class AuthSettings(BaseModel):
    """Who may call the REST door."""

    tokens_file: Path | None = Field(
        default=None,
        description=(
            "File of `name:sha256hex` lines (SHA-256 of each bearer token; `#` "
            "comments allowed), re-read when it changes. Set: every route but "
            "/livez and /readyz needs `Authorization: Bearer <token>`. Unset: "
            "the service is open (refused when environment is production)."
        ),
    )
    protect_metrics: bool = Field(
        default=False,
        description=(
            "Also require a token on /metrics (off: Prometheus scrapes it with "
            "the network policy or its own credentials in front)."
        ),
    )


class Settings(BaseSettings):
    """All PredictFlow settings."""

    model_config = SettingsConfigDict(
        env_prefix="PREDICTFLOW_", env_nested_delimiter="__", extra="ignore"
    )

    environment: Literal["development", "production"] = Field(
        default="development",
        validation_alias=AliasChoices("PREDICTFLOW_ENV", "PREDICTFLOW_ENVIRONMENT"),
        description="`production` refuses embedded stores meant for one machine.",
    )
    data_dir: Path = Field(
        default=PROJECT_ROOT / "var",
        description=(
            "Local state: the MLflow SQLite store and its artifacts (Feast keeps "
            "its files in the repository's data/)."
        ),
    )
    log_level: str = Field(default="INFO", description="Python log level.")
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    feast: FeastSettings = Field(default_factory=FeastSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        check_kafka(self.kafka)
        if self.environment == "production":
            if self.feast.online_store == "sqlite":
                raise ValueError(
                    "production needs a shared online store: set "
                    "PREDICTFLOW_FEAST__ONLINE_STORE=redis"
                )
            if self.serving.model_tag.endswith(":latest"):
                raise ValueError(
                    "production serves a pinned model: set "
                    "PREDICTFLOW_SERVING__MODEL_TAG=churn-predictor:<version>"
                )
            if self.auth.tokens_file is None:
                raise ValueError(
                    "production does not serve open: set PREDICTFLOW_AUTH__TOKENS_FILE "
                    "(see `predictflow token new NAME`)"
                )
            if self.kafka.bootstrap_servers and self.kafka.security_protocol in (
                "PLAINTEXT",
                "SASL_PLAINTEXT",
            ):
                raise ValueError(
                    "production does not talk to Kafka in the clear: set "
                    "PREDICTFLOW_KAFKA__SECURITY_PROTOCOL=SASL_SSL (or SSL)"
                )
        return self

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force."""
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        """Where a local MLflow store keeps model artifacts."""
        return (self.data_dir / "mlartifacts").resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings in force (cached)."""
    return Settings()
