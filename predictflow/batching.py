"""Micro-batching: concurrent single requests share one feature read and one model call.

A feature read and a model call cost mostly per call, not per row (Feast
answers 8 customers in about the time of 2; XGBoost scores a row of a batch in
microseconds). `MicroBatcher.score` parks each request on a future and, once
the event loop has run every callback that was ready when the first one
arrived, scores everything parked in one `Scorer.score` call. So:

- no timer and no added latency: a request alone is scored on the next turn
  of the loop;
- the batch grows with the load: while one batch is being scored, the next
  requests queue up in the sockets and arrive together;
- the batch is capped (`max_size`) so one turn of the loop stays short.

Runs on one event loop (a BentoML worker's); not thread-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from predictflow import metrics
from predictflow.contract import ChurnRequest
from predictflow.scoring import Result, Scorer


class MicroBatcher:
    """Coalesces the `score` calls of one event loop into batched `Scorer` calls."""

    def __init__(self, scorer: Scorer, source: str, max_size: int = 64) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.scorer = scorer
        self.source = source
        self.max_size = max_size
        self._pending: list[tuple[ChurnRequest, asyncio.Future[Result]]] = []
        self._flush_scheduled = False

    async def score(self, request: ChurnRequest) -> Result:
        """The result of one request, scored together with its concurrent peers.

        Raises what `Scorer.score` raises for the batch (e.g.
        `FeatureStoreUnavailable`).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((request, future))
        if len(self._pending) >= self.max_size:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending:
            batch = self._pending[: self.max_size]
            del self._pending[: self.max_size]
            self._run(batch)

    def _run(
        self, batch: Sequence[tuple[ChurnRequest, asyncio.Future[Result]]]
    ) -> None:
        metrics.get().batch_size.labels(self.source).observe(len(batch))
        try:
            results = self.scorer.score([request for request, _ in batch], self.source)
        except Exception as exc:  # noqa: BLE001 - every waiter gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            # A waiter whose client went away was cancelled; skip it.
            if not future.done():
                future.set_result(result)
