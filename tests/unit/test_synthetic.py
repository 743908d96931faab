"""The synthetic customers of `bootstrap --synthetic`: stable, valid, not Telco's."""

from __future__ import annotations

import re

import pandas as pd
from pydantic import TypeAdapter

from predictflow import synthetic
from predictflow.contract import CustomerId
from predictflow.data import load_telco


def test_a_chunk_is_the_same_at_every_call_and_ids_follow_their_offset() -> None:
    pd.testing.assert_frame_equal(
        synthetic.chunk(0, 50, 20), synthetic.chunk(0, 50, 20)
    )
    whole = pd.concat([synthetic.chunk(s, 50, 20) for s in range(0, 50, 20)])
    assert len(whole) == 50
    assert whole["customer_id"].is_unique
    assert whole["customer_id"].iloc[-1] == synthetic._last_id(50)
    # Chunks seeded apart: not the same customers twice.
    assert not synthetic.chunk(0, 40, 20)["tenure"].equals(
        synthetic.chunk(20, 40, 20)["tenure"].reset_index(drop=True)
    )


def test_ids_are_valid_requests_and_never_a_telco_id() -> None:
    ids = synthetic.chunk(0, 1000, 1000)["customer_id"]
    telco = re.compile(r"^\d{4}-[A-Z]{5}$")
    assert all(telco.match(cid) for cid in load_telco()["customer_id"])
    assert not any(telco.match(cid) for cid in ids)
    adapter = TypeAdapter(CustomerId)
    for cid in ids[:50]:
        adapter.validate_python(cid)
