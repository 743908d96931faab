"""Structured logging: one `key=value` line per event."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def configure(level: str = "INFO") -> None:
    """Log `key=value` lines to stderr (idempotent)."""
    root = logging.getLogger()
    if not any(getattr(h, "_predictflow", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._predictflow = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    # Feast logs every registry cache refresh at INFO, aiokafka every
    # subscription change.
    for chatty in ("feast", "aiokafka"):
        logging.getLogger(chatty).setLevel(max(root.level, logging.WARNING))


class step:  # noqa: N801 - used as a context manager, reads as a verb
    """Log the start, end and duration of one step of a longer job."""

    def __init__(self, name: str, logger: logging.Logger) -> None:
        self.name = name
        self.log = logger
        self.start = 0.0

    def __enter__(self) -> step:
        self.start = time.perf_counter()
        self.log.info("step=%s status=start", self.name)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.log.info(
            "step=%s status=%s seconds=%.2f",
            self.name,
            "failed" if exc_type else "done",
            time.perf_counter() - self.start,
        )
