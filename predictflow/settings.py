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


class ServingSettings(BaseModel):
    """How the service serves."""

    model_tag: str = Field(
        default="churn-predictor:latest",
        description="Bento store tag of the model to serve (pin a version in prod).",
    )
    max_batch_size: int = Field(
        default=256,
        ge=1,
        le=1000,
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


class KafkaSettings(BaseModel):
    """The Kafka request/reply front door (off unless bootstrap_servers is set)."""

    bootstrap_servers: str | None = Field(
        default=None,
        description="Comma-separated brokers; unset turns the Kafka runner off.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT"] = (
        Field(
            default="PLAINTEXT",
            description=(
                "How clients reach the brokers: PLAINTEXT (local only), SSL (TLS, "
                "optionally mutual), SASL_SSL (TLS plus a SASL login), or "
                "SASL_PLAINTEXT (a login without TLS: the compose stack's private "
                "network only; production refuses it)."
            ),
        )
    )
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism (SASL_*)."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (never logged or shown)."
    )
    ssl_cafile: Path | None = Field(
        default=None,
        description="CA certificate (PEM) that signed the brokers' certificates.",
    )
    ssl_certfile: Path | None = Field(
        default=None, description="Client certificate (PEM), for mutual TLS."
    )
    ssl_keyfile: Path | None = Field(
        default=None, description="Client private key (PEM), for mutual TLS."
    )
    request_topic: str = Field(
        default="churn-requests", description="Topic the runner consumes."
    )
    reply_topic: str = Field(
        default="churn-responses",
        description="Reply topic when a request names none in its reply_to header.",
    )
    dlq_topic: str = Field(
        default="churn-requests.dlq",
        description="Dead-letter topic for poison records.",
    )
    group_id: str = Field(
        default="predictflow-churn", description="Consumer group of every runner."
    )
    request_partitions: int = Field(
        default=6, ge=1, description="Partitions of the request topic when created."
    )
    replication_factor: int = Field(
        default=1, ge=1, description="Replication factor of topics the runner creates."
    )
    create_topics: bool = Field(
        default=True, description="Create missing topics at start-up."
    )
    max_batch: int = Field(
        default=500, ge=1, le=10_000, description="Most records scored per poll."
    )
    poll_timeout_ms: int = Field(
        default=200, ge=1, description="Longest wait for records in one poll."
    )
    max_in_flight_batches: int = Field(
        default=4,
        ge=1,
        description=(
            "Scored polls whose replies may await broker acks at once; past "
            "this the runner waits for the oldest (bounded memory)."
        ),
    )
    fetch_min_bytes: int = Field(
        default=1,
        ge=1,
        description=(
            "Bytes the broker gathers before it answers a fetch (Kafka's "
            "fetch.min.bytes). 1: each request is fetched as it arrives. "
            "Raised (e.g. 16384 with fetch_max_wait_ms 5), several runners at a "
            "low rate make fewer fetches, polls and commits, at a few ms each."
        ),
    )
    fetch_max_wait_ms: int = Field(
        default=500,
        ge=0,
        description="Longest the broker holds a fetch for fetch_min_bytes.",
    )
    exactly_once: bool = Field(
        default=False,
        description=(
            "Reply and commit in one Kafka transaction; readers use read_committed."
        ),
    )
    session_timeout_ms: int = Field(
        default=10_000,
        ge=1000,
        description=(
            "Consumer group session timeout: a runner not heard from for this "
            "long loses its partitions to the others."
        ),
    )
    transaction_timeout_ms: int = Field(
        default=5000,
        ge=1000,
        description=(
            "Exactly-once: the broker aborts a transaction left open this long. "
            "Kept below session_timeout_ms, so a runner stalled long enough to "
            "lose its partitions cannot commit the transaction it held open."
        ),
    )
    transactional_id: str = Field(
        default="predictflow-churn",
        description="Prefix of each runner's transactional id (exactly-once mode).",
    )
    reply_topic_pattern: str = Field(
        default=r"[A-Za-z0-9._-]+[-.](replies|responses)",
        description=(
            "Regular expression (full match) of the topics a request may name in "
            "its reply_to header, besides reply_topic. Kafka's internal topics, the "
            "request topic and the dead-letter topic are never allowed."
        ),
    )
    metadata_timeout_ms: int = Field(
        default=3000,
        ge=100,
        description=(
            "Longest wait for a reply topic's metadata; a topic that does not "
            "answer by then is taken as missing and its requests dead-lettered."
        ),
    )
    topic_cache_seconds: float = Field(
        default=60.0,
        ge=0,
        description=(
            "How long a reply topic found missing or forbidden is remembered "
            "(its requests are dead-lettered without asking the broker again)."
        ),
    )
    max_message_bytes: int = Field(
        default=1_000_000,
        ge=10_000,
        description=(
            "Largest record the runner produces (keep it under the broker's "
            "message.max.bytes); a dead letter over it is truncated, with "
            "headers giving the original size and SHA-256."
        ),
    )
    outage_backoff_max_seconds: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Longest pause between probes while a dependency (feature store, "
            "broker) is down; consumption resumes by itself once it answers."
        ),
    )
    score_retries: int = Field(
        default=3,
        ge=0,
        description=(
            "Retries of a batch whose features could not be read, before its "
            "requests get a feature_store_unavailable ErrorReply."
        ),
    )
    instance_id: str | None = Field(
        default=None,
        description=(
            "Stable name of this runner (client id, transactional id). Unset: the "
            "host name, plus the worker index inside the service."
        ),
    )
    metrics_port: int = Field(
        default=9108,
        ge=0,
        description="Prometheus port of the standalone runner (0: no endpoint).",
    )


def _check_kafka_security(kafka: KafkaSettings) -> None:
    if kafka.security_protocol.startswith("SASL_") and not (
        kafka.sasl_username and kafka.sasl_password
    ):
        raise ValueError(
            f"kafka.security_protocol {kafka.security_protocol} needs "
            "kafka.sasl_username and kafka.sasl_password"
        )
    if (kafka.ssl_certfile is None) != (kafka.ssl_keyfile is None):
        raise ValueError("kafka.ssl_certfile and kafka.ssl_keyfile go together")


def _check_kafka_timeouts(kafka: KafkaSettings) -> None:
    if kafka.transaction_timeout_ms >= kafka.session_timeout_ms:
        raise ValueError(
            "kafka.transaction_timeout_ms must be below kafka.session_timeout_ms "
            "(a zombie runner's open transaction must be aborted before its "
            "partitions move)"
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
        description="Local state: MLflow SQLite store and artifacts, Feast stores.",
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
        _check_kafka_timeouts(self.kafka)
        _check_kafka_security(self.kafka)
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

    @property
    def feast_dir(self) -> Path:
        """Feast's local files: registry, SQLite online store, offline parquet."""
        return (self.data_dir / "feast").resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings in force (cached)."""
    return Settings()
