"""Who the load asks for: every customer in the store, drawn uniformly at random.

The Telco customers plus the synthetic ones of `predictflow bootstrap
--synthetic` (10^6 in the full run). Each draw is seeded, so a run can be
repeated, and the service and the baseline of one round get the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Customers:
    """The ids the online store holds."""

    ids: Sequence[str]

    @classmethod
    def of(cls, telco: Sequence[str], synthetic_ids: Path | None) -> Customers:
        """The Telco ids plus those listed in `synthetic_ids` (one per line)."""
        extra: list[str] = []
        if synthetic_ids is not None:
            extra = [x for x in synthetic_ids.read_text().split("\n") if x]
        return cls([*telco, *extra])

    def draw(self, k: int, seed: int) -> list[str]:
        """`k` ids drawn uniformly with replacement (seeded)."""
        picks = np.random.default_rng(seed).integers(0, len(self.ids), size=k)
        return [self.ids[i] for i in picks]

    def write(self, path: Path, k: int, seed: int) -> Path:
        """`draw(k, seed)` into `path`, one id per line (wrk, the Kafka clients)."""
        path.write_text("\n".join(self.draw(k, seed)) + "\n")
        return path
