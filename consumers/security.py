"""Kafka client security for the runner: `predictflow.kafka_security`.

It lives in `predictflow` because the request/reply client and `predictflow
publish` need it too, and the installed package ships `predictflow` only.
"""

from __future__ import annotations

from predictflow.kafka_security import client_security

__all__ = ["client_security"]
