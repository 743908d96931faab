"""Process-level tuning shared by the service workers and the standalone runner."""

from __future__ import annotations

import collections
import gc
import logging
import sys
import threading
import time
from typing import Any

from predictflow import metrics

log = logging.getLogger(__name__)


def lean_imports() -> None:
    """Skip import-time work a serving process never uses (call before Feast loads).

    Most of a worker's cold start went here (figures: bench/README.md).

    - Feast decorates its definition classes (FeatureView, Entity, Field...)
      with typeguard's `@typechecked`, which re-parses and recompiles their
      source at import, for seconds. Those run-time argument checks guard
      someone writing feature definitions; the serving process only reads a
      registry written by `predictflow bootstrap` (which keeps them).
      typeguard's own switch is `python -O` (it returns the function
      unchanged when `__debug__` is false); this does the same for this
      process alone, without also dropping every `assert`.
    - xgboost imports scikit-learn (and with it much of SciPy) only to offer
      its scikit-learn wrappers; the service scores with the `Booster`.
      Marking `sklearn` absent (`sys.modules[name] = None`, Python's way to
      make an import fail) saves about a second. Training (`predictflow bootstrap`)
      runs in its own process and keeps scikit-learn.

    Does nothing for a module already imported in this process.
    """
    if "feast" not in sys.modules:
        import typeguard

        typeguard.typechecked = _unchecked
    if "sklearn" not in sys.modules and "xgboost" not in sys.modules:
        sys.modules["sklearn"] = None  # type: ignore[assignment]


def _unchecked(target: Any = None, **_: Any) -> Any:
    """`typeguard.typechecked` with checking off: the target unchanged."""
    if target is None:
        return lambda f: f
    return target


def hold_collections() -> None:
    """No garbage collection from now until `settle_heap`: start-up allocates.

    Importing Feast, pandas and XGBoost and loading the model allocates some
    200,000 objects that live as long as the process. On the way the
    collector ran 4 full collections over them that freed almost nothing:
    0.2 s of each worker's start (bench/README.md). A process that holds
    collections must settle its heap, or give up (`release_collections`).
    """
    global _held
    if gc.isenabled():
        gc.disable()
        _held = True


def release_collections() -> None:
    """Turn collection back on if `hold_collections` turned it off."""
    global _held
    if _held:
        _held = False
        gc.enable()


def settle_heap() -> None:
    """Freeze what start-up left, collect again; time every collection after.

    A worker imports Feast, pandas, pyarrow, BentoML: hundreds of thousands of
    objects that live as long as the process. A full collection walks all of
    them: pauses of hundreds of milliseconds under load. `gc.freeze()` moves
    them to the permanent generation, which collections skip, so a full
    collection walks only what was allocated since start-up. Start-up's
    garbage is frozen with them rather than collected first: a few hundred
    unreachable objects, not worth a full collection (85 ms a worker).

    The collection thresholds stay CPython's: a larger young generation made
    each young collection several times longer for the same total, which is
    worse for the tail (bench/README.md). `predictflow_gc_pause_seconds`
    shows the pauses.
    """
    gc.freeze()
    release_collections()
    global _flusher
    # Every generation's series exists from the start, so a scrape does not
    # sprout new ones the first time an older generation is collected.
    histogram = metrics.get().gc_pause_seconds
    for generation in range(len(gc.get_threshold())):
        histogram.labels(str(generation))
    if _observe_pause not in gc.callbacks:
        gc.callbacks.append(_observe_pause)
    if _flusher is None:
        _flusher = threading.Thread(
            target=_flush_forever, name="gc-pause-metrics", daemon=True
        )
        _flusher.start()
    log.info("event=heap_settled frozen_objects=%d", gc.get_freeze_count())


def resettle_heap() -> None:
    """Freeze again what a one-time late import left in the heap.

    The model follower's first registry check imports the MLflow client
    (MLflow, SQLAlchemy, Alembic: 235,000 objects, 3 s) tens of seconds
    after start. Left unfrozen, every full collection walked them: pauses of
    50-250 ms in the Kafka runner at 5,000 msg/s, about every 10 s. Does
    nothing in a process whose heap was never settled (`settle_heap`).
    """
    if _flusher is None:
        return
    gc.collect()
    gc.freeze()
    log.info("event=heap_settled frozen_objects=%d", gc.get_freeze_count())


_started = 0.0
#: Whether `hold_collections` turned collection off (`settle_heap` turns it on).
_held = False
#: Pauses timed by the GC callback, waiting for `flush_gc_pauses` (bounded).
_pauses: collections.deque[tuple[int, float]] = collections.deque(maxlen=4096)
_flusher: threading.Thread | None = None


def _observe_pause(phase: str, info: dict[str, Any]) -> None:
    """GC callback: time the pause, and only queue it.

    A collection can start anywhere, also while this thread holds
    prometheus_client's (non-reentrant) value lock; observing a metric here
    took that lock again and wedged the worker for good (seen under a burst
    of 503s). So the callback touches no lock; `flush_gc_pauses` observes.
    """
    global _started
    if phase == "start":
        _started = time.perf_counter()
        return
    _pauses.append((info["generation"], time.perf_counter() - _started))


def flush_gc_pauses() -> None:
    """Observe the queued GC pauses on `predictflow_gc_pause_seconds`."""
    histogram = metrics.get().gc_pause_seconds
    while _pauses:
        generation, seconds = _pauses.popleft()
        histogram.labels(str(generation)).observe(seconds)


def _flush_forever() -> None:
    while True:
        time.sleep(1.0)
        flush_gc_pauses()
