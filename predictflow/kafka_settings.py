"""The Kafka door's settings (`PREDICTFLOW_KAFKA__*`), part of `Settings`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr


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
    heartbeat_interval_ms: int = Field(
        default=500,
        ge=100,
        description=(
            "How often a runner heartbeats to its group, which is also how soon "
            "it learns of a rebalance (a canary step, a pod added or gone): "
            "aiokafka's 3 s default kept the whole group waiting that long."
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


def check_kafka(kafka: KafkaSettings) -> None:
    """Refuse settings that cannot work together (called by `Settings`)."""
    if kafka.security_protocol.startswith("SASL_") and not (
        kafka.sasl_username and kafka.sasl_password
    ):
        raise ValueError(
            f"kafka.security_protocol {kafka.security_protocol} needs "
            "kafka.sasl_username and kafka.sasl_password"
        )
    if (kafka.ssl_certfile is None) != (kafka.ssl_keyfile is None):
        raise ValueError("kafka.ssl_certfile and kafka.ssl_keyfile go together")
    if kafka.heartbeat_interval_ms * 3 > kafka.session_timeout_ms:
        raise ValueError(
            "kafka.heartbeat_interval_ms must be at most a third of "
            "kafka.session_timeout_ms (Kafka's rule for heartbeats)"
        )
    if kafka.transaction_timeout_ms >= kafka.session_timeout_ms:
        raise ValueError(
            "kafka.transaction_timeout_ms must be below kafka.session_timeout_ms "
            "(a zombie runner's open transaction must be aborted before its "
            "partitions move)"
        )
