"""How every Kafka client reaches the brokers: one place for TLS and SASL.

The runner, the request/reply client, `predictflow publish` and topic creation
all pass `client_security(settings)` to aiokafka, so a secured cluster is
configured once, by `PREDICTFLOW_KAFKA__*` settings. The password leaves its
`SecretStr` only here, into the client's keyword arguments.
"""

from __future__ import annotations

from typing import Any

from predictflow.settings import KafkaSettings


def client_security(settings: KafkaSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for the configured security protocol."""
    if settings.security_protocol == "PLAINTEXT":
        return {}
    args: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol.endswith("SSL"):
        from aiokafka.helpers import create_ssl_context

        args["ssl_context"] = create_ssl_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None,
            certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
            keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        )
    if settings.security_protocol.startswith("SASL_"):
        password = settings.sasl_password
        args.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=password.get_secret_value() if password else None,
        )
    return args
