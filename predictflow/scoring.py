"""The scoring core: the only place where requests become churn scores.

Both front doors (REST and the Kafka runner) call `Scorer.score` with a batch:
one feature read for the whole batch, request-time fields over stored ones,
one model call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from predictflow import metrics
from predictflow.contract import (
    ChurnRequest,
    ChurnResult,
    ChurnScore,
    Reason,
)
from predictflow.encoding import FEATURES, FIELD_OF_COLUMN, encode_rows
from predictflow.errors import FeatureStoreUnavailable, ScoringFailed, UnknownCustomer
from predictflow.model import ChurnModel

log = logging.getLogger("predictflow.scoring")


class FeatureSource(Protocol):
    """Stored features of customers, read in one call for many."""

    def get(self, customer_ids: Sequence[str]) -> list[Mapping[str, object] | None]:
        """One entry per id, in order: its features, or None when unknown.

        Raises `FeatureStoreUnavailable` when the store cannot be read.
        """
        ...


class Scorer:
    """Scores batches of `ChurnRequest`s."""

    def __init__(self, features: FeatureSource, model: ChurnModel) -> None:
        self.features = features
        self.model = model

    @property
    def model_version(self) -> str:
        """The version of the model that scores."""
        return self.model.version

    def score(self, requests: Sequence[ChurnRequest], source: str) -> list[ChurnResult]:
        """Score a batch; one result per request, in order.

        A request whose customer is unknown (and whose overrides do not give
        every feature) gets an `ErrorReply`; the rest of the batch is scored.
        A batch that raises anything else (a stored row the model cannot
        encode) is scored again request by request, so only the request that
        fails gets an `internal_error` reply (its cause is logged, not
        returned). `source` labels the metrics (`rest`, `kafka`). Raises
        `FeatureStoreUnavailable` when features are needed and cannot be read.
        """
        try:
            return self._score(requests, source)
        except FeatureStoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - decided per request below
            if len(requests) != 1:
                return [r for one in requests for r in self.score([one], source)]
            request = requests[0]
            log.error(
                "event=scoring_failed source=%s customer_id=%s error=%s: %s",
                source,
                request.customer_id,
                type(exc).__name__,
                str(exc)[:300],
            )
            metrics.get().predictions.labels(source, "scoring_failed").inc()
            return [
                ScoringFailed(
                    "this request could not be scored; the cause is in the service log",
                    customer_id=request.customer_id,
                ).to_reply()
            ]

    def _score(
        self, requests: Sequence[ChurnRequest], source: str
    ) -> list[ChurnResult]:
        overrides = [r.overrides() for r in requests]
        wanted = sorted(
            {
                r.customer_id
                for r, o in zip(requests, overrides, strict=True)
                if len(o) < len(FEATURES)
            }
        )
        m = metrics.get()
        stored: dict[str, Mapping[str, object] | None] = {}
        if wanted:
            start = time.perf_counter()
            try:
                rows = self.features.get(wanted)
            except FeatureStoreUnavailable:
                m.predictions.labels(source, "feature_store_unavailable").inc(
                    len(requests)
                )
                raise
            finally:
                m.feature_fetch_seconds.observe(time.perf_counter() - start)
            stored = dict(zip(wanted, rows, strict=True))

        results: list[ChurnResult | None] = [None] * len(requests)
        to_score: list[int] = []
        merged: list[Mapping[str, object]] = []
        for i, (request, override) in enumerate(zip(requests, overrides, strict=True)):
            base = stored.get(request.customer_id)
            if base is None and len(override) < len(FEATURES):
                results[i] = UnknownCustomer(
                    f"customer {request.customer_id!r} has no stored features; "
                    f"to score a new customer give all {len(FEATURES)} features "
                    f"({len(FEATURES) - len(override)} missing)",
                    customer_id=request.customer_id,
                ).to_reply()
                continue
            to_score.append(i)
            merged.append({**(base or {}), **override})

        if to_score:
            # Read once: a model swapped in meanwhile (`lifecycle`) scores the
            # next batch; this one is scored and explained by one model.
            model = self.model
            x = encode_rows(merged)
            probabilities = model.predict(x)
            for i, p in zip(to_score, probabilities.tolist(), strict=True):
                results[i] = ChurnScore(
                    customer_id=requests[i].customer_id,
                    churn_probability=p,
                    model_version=model.version,
                )
                m.scores.observe(p)
            explained = [j for j, i in enumerate(to_score) if requests[i].explain]
            if explained:
                self._explain(model, requests, results, to_score, merged, x, explained)
            m.predictions.labels(source, "scored").inc(len(to_score))
        if len(to_score) < len(requests):
            m.predictions.labels(source, "unknown_customer").inc(
                len(requests) - len(to_score)
            )
        return [r for r in results if r is not None]

    def _explain(
        self,
        model: ChurnModel,
        requests: Sequence[ChurnRequest],
        results: list[ChurnResult | None],
        to_score: list[int],
        merged: list[Mapping[str, object]],
        x: npt.NDArray[np.float32],
        explained: list[int],
    ) -> None:
        """Add reasons to the scores of requests that asked (only those pay)."""
        contributions = model.contributions(x[explained])
        per_field = np.zeros((len(explained), len(FEATURES)))
        np.add.at(per_field.T, np.asarray(FIELD_OF_COLUMN), contributions[:, :-1].T)
        for row, j in enumerate(explained):
            i = to_score[j]
            score = results[i]
            if not isinstance(score, ChurnScore):  # pragma: no cover - set above
                continue
            order = np.argsort(-np.abs(per_field[row]), kind="stable")
            reasons = [
                Reason(
                    feature=FEATURES[f],
                    value=_plain(merged[j][FEATURES[f]]),
                    contribution=float(per_field[row, f]),
                )
                for f in order[: requests[i].explain]
            ]
            results[i] = score.model_copy(
                update={
                    "reasons": reasons,
                    "base_log_odds": float(contributions[row, -1]),
                }
            )


def _plain(value: object) -> str | int | float | bool:
    """A stored value as the JSON scalar a reason shows (numpy scalars unwrapped)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)
