"""`python -m consumers`: the Kafka runner alone, for a Deployment scaled on lag.

Loads the same model (Bento store) and feature store as the service, serves
Prometheus metrics on `kafka.metrics_port` (0: none), and stops cleanly on SIGTERM or
SIGINT: stop polling, finish the poll in hand, commit, leave the group.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

# Loaded before the heap is settled (the runner would import it on start).
import aiokafka  # noqa: F401
import uvloop

from consumers.runner import KafkaRunner
from predictflow import logconfig
from predictflow.lifecycle import ModelFollower
from predictflow.serving import build_core
from predictflow.settings import get_settings

log = logging.getLogger("predictflow.kafka")


def serve_metrics(port: int) -> bool:
    """Serve Prometheus metrics on `port`, all interfaces; 0: no endpoint.

    Returns whether an endpoint was started.
    """
    if port == 0:
        log.info("event=metrics_endpoint_off kafka.metrics_port=0")
        return False
    from prometheus_client import start_http_server

    start_http_server(port, addr="0.0.0.0")  # noqa: S104 - scraped from outside
    return True


async def main() -> None:
    """Run one standalone runner until a signal stops it."""
    settings = get_settings()
    logconfig.configure(settings.log_level)
    serve_metrics(settings.kafka.metrics_port)
    instance = settings.kafka.instance_id or socket.gethostname()
    core = build_core(settings)
    scorer = core.scorer
    runner = KafkaRunner(scorer, settings.kafka, instance=instance, score_inline=True)
    # Everything loaded so far lives as long as the process: out of the
    # collector's way (a full collection walked Feast's and pandas' objects
    # every few polls, a large share of the runner's CPU under load).
    core.settle()
    loop = asyncio.get_running_loop()
    serving = asyncio.create_task(runner.serve())
    stopping = asyncio.Event()
    # Held so the task is not garbage-collected while it runs.
    following = asyncio.create_task(ModelFollower(scorer, settings).run(stopping))

    def on_signal() -> None:
        stopping.set()
        loop.create_task(runner.stop())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await serving
    stopping.set()
    await following


if __name__ == "__main__":
    # uvloop, as in the service's workers: less CPU per record on the network.
    uvloop.run(main())
