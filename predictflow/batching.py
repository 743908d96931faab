"""Micro-batching: concurrent requests share one feature read and one model call.

A feature read and a model call cost mostly per call, not per row (Feast
answers 8 customers in about the time of 2; XGBoost scores a row of a batch in
microseconds). `MicroBatcher` parks each caller's requests on a future and
scores everything parked in one `Scorer.score` call, on a thread of its own:

- the event loop never blocks on a feature read or the model (a stalled
  Redis or a locked SQLite file cannot freeze the worker or its probes);
- no timer and no added latency: a request alone is handed to the thread on
  the next turn of the loop;
- the batch grows with the load: while the thread scores one batch, the
  next requests park and go together as soon as it is free;
- the batch is capped (`max_size`), unless one caller's own batch is larger;
- every caller has a deadline (`timeout`): past it, it gets
  `FeatureStoreUnavailable` (503, retryable) when the read in progress is
  slow (its own or one it queued behind), `Overloaded` when the queue simply
  did not drain in time (the worker is behind); while the thread has been
  stuck for longer than the deadline, new callers get
  `FeatureStoreUnavailable` at once;
- the queue is bounded (`max_queue` customers): past it, `Overloaded`.

Used from one event loop (a worker's); the thread only runs `Scorer.score`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from predictflow import metrics
from predictflow.contract import ChurnRequest, ChurnResult
from predictflow.errors import FeatureStoreUnavailable, Overloaded
from predictflow.scoring import Scorer

log = logging.getLogger(__name__)

_Outcome = list[ChurnResult] | BaseException


@dataclass(slots=True)
class _Job:
    """One caller's requests and the future its results go to."""

    requests: Sequence[ChurnRequest]
    future: asyncio.Future[list[ChurnResult]]


class MicroBatcher:
    """Coalesces the scoring calls of one event loop into batched `Scorer` calls."""

    def __init__(
        self,
        scorer: Scorer,
        source: str,
        max_size: int = 64,
        timeout: float = 2.0,
        max_queue: int = 4096,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.scorer = scorer
        self.source = source
        self.max_size = max_size
        self.timeout = timeout
        self.max_queue = max_queue
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # customers parked, not yet handed to the thread
        self._busy_since: float | None = None  # loop time the thread took a batch
        self._slow_read_ended: float | None = None  # a slow or failed read ended
        self._start_scheduled = False
        self._thread: _ScoringThread | None = None

    async def score(self, request: ChurnRequest) -> ChurnResult:
        """The result of one request, scored together with its concurrent peers.

        Raises `FeatureStoreUnavailable` (store down, or no answer within
        `timeout`) and `Overloaded` (queue full).
        """
        (result,) = await self.score_many((request,))
        return result

    async def score_many(self, requests: Sequence[ChurnRequest]) -> list[ChurnResult]:
        """The results of a caller's own batch, in order (one queue with `score`)."""
        loop = asyncio.get_running_loop()
        if self._busy_since is not None and (
            loop.time() - self._busy_since > self.timeout
        ):
            raise FeatureStoreUnavailable(self._late_message())
        if self._queued + len(requests) > self.max_queue and self._queued:
            raise Overloaded(
                f"{self._queued} customers already wait to be scored in this "
                "worker; retry shortly"
            )
        job = _Job(requests, loop.create_future())
        self._jobs.append(job)
        self._queued += len(requests)
        if self._busy_since is None and not self._start_scheduled:
            self._start_scheduled = True
            loop.call_soon(self._start_next)
        timer = loop.call_later(self.timeout, self._expire, job)
        try:
            return await job.future
        finally:
            timer.cancel()

    def close(self) -> None:
        """Stop the scoring thread once it is idle (a stuck one is a daemon)."""
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    def _late_message(self) -> str:
        return (
            f"the online feature store did not answer within {self.timeout:g} s; "
            "retry shortly"
        )

    def _expire(self, job: _Job) -> None:
        if job.future.done():
            return
        if self._store_slow(asyncio.get_running_loop().time()):
            job.future.set_exception(FeatureStoreUnavailable(self._late_message()))
        else:
            job.future.set_exception(
                Overloaded(
                    f"not scored within {self.timeout:g} s: this worker is "
                    "overloaded; retry shortly"
                )
            )

    def _store_slow(self, now: float) -> bool:
        """Whether waiting callers wait on the store rather than on the queue.

        The store: the read in progress has taken half the deadline already
        (a batch takes milliseconds), or a read that slow or failing ended
        within the last deadline. Else the queue did not drain: overload.
        """
        busy = self._busy_since
        if busy is not None and now - busy >= self.timeout / 2:
            return True
        slow = self._slow_read_ended
        return slow is not None and now - slow <= self.timeout

    def _start_next(self) -> None:
        self._start_scheduled = False
        if self._busy_since is not None:
            return
        batch: list[_Job] = []
        size = 0
        jobs = self._jobs
        while jobs:
            job = jobs[0]
            if batch and size + len(job.requests) > self.max_size:
                break
            jobs.popleft()
            self._queued -= len(job.requests)
            # A caller past its deadline or gone (cancelled) is not scored.
            if not job.future.done():
                batch.append(job)
                size += len(job.requests)
        if not batch:
            return
        loop = asyncio.get_running_loop()
        self._busy_since = loop.time()
        metrics.get().batch_size.labels(self.source).observe(size)
        requests = [r for job in batch for r in job.requests]
        if self._thread is None:
            self._thread = _ScoringThread(self.scorer, self.source)
        self._thread.submit(
            requests,
            lambda outcome: loop.call_soon_threadsafe(self._finish, batch, outcome),
        )

    def _finish(self, batch: Sequence[_Job], outcome: _Outcome) -> None:
        now = asyncio.get_running_loop().time()
        started = self._busy_since if self._busy_since is not None else now
        if isinstance(outcome, FeatureStoreUnavailable) or (
            now - started >= self.timeout / 2
        ):
            self._slow_read_ended = now
        self._busy_since = None
        start = 0
        for job in batch:
            end = start + len(job.requests)
            # A waiter past its deadline or gone already has its answer.
            if not job.future.done():
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome[start:end])
            start = end
        if self._jobs:
            self._start_next()


class _ScoringThread:
    """A daemon thread that runs one `Scorer.score` at a time, in order."""

    def __init__(self, scorer: Scorer, source: str) -> None:
        self._scorer = scorer
        self._source = source
        self._inbox: queue.SimpleQueue[
            tuple[list[ChurnRequest], Callable[[_Outcome], object]] | None
        ] = queue.SimpleQueue()
        # A daemon: a thread stuck on a dead store must not hold the process
        # at exit.
        self._thread = threading.Thread(
            target=self._run, name=f"scoring-{source}", daemon=True
        )
        self._thread.start()

    def submit(
        self, requests: list[ChurnRequest], deliver: Callable[[_Outcome], object]
    ) -> None:
        self._inbox.put((requests, deliver))

    def stop(self) -> None:
        self._inbox.put(None)

    def _run(self) -> None:
        while (item := self._inbox.get()) is not None:
            requests, deliver = item
            outcome: _Outcome
            try:
                outcome = self._scorer.score(requests, self._source)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiters
                outcome = exc
            try:
                deliver(outcome)
            except RuntimeError:  # the loop closed: nobody is waiting any more
                return
