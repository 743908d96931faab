from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from predictflow.contract import (
    ChurnBatchRequest,
    ChurnBatchResponse,
    ChurnRequest,
    ChurnScore,
    ErrorReply,
    json_schemas,
)

PINNED = Path(__file__).with_name("contract_schema.json")


def test_json_schema_is_pinned() -> None:
    pinned = json.loads(PINNED.read_text())
    assert json_schemas() == pinned, (
        "the public contract changed; if on purpose, regenerate with "
        "`python -m predictflow.contract > tests/unit/contract_schema.json`"
    )


def test_every_field_is_described() -> None:
    def walk(schema: dict[str, object], where: str) -> None:
        for name, prop in schema.get("properties", {}).items():  # type: ignore[attr-defined]
            assert prop.get("description"), f"{where}.{name} has no description"
        for sub_name, sub in schema.get("$defs", {}).items():  # type: ignore[attr-defined]
            walk(sub, sub_name)

    for name, schema in json_schemas().items():
        walk(schema, name)


def test_request_overrides_are_only_the_given_fields() -> None:
    r = ChurnRequest(customer_id="7590-VHVEG", tenure=3, senior_citizen=False)
    assert r.overrides() == {"tenure": 3, "senior_citizen": False}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"customer_id": ""},
        {"customer_id": "has space"},
        {"customer_id": "x" * 65},
        {"customer_id": "7590-VHVEG", "tenure": "3"},
        {"customer_id": "7590-VHVEG", "tenure": -1},
        {"customer_id": "7590-VHVEG", "contract": "Weekly"},
        {"customer_id": "7590-VHVEG", "senior_citizen": 1},
        {"customer_id": "7590-VHVEG", "unknown_field": 1},
        {"customer_id": 7590},
    ],
)
def test_invalid_requests_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ChurnRequest.model_validate_json(json.dumps(body))


def test_float_fields_accept_json_integers() -> None:
    r = ChurnRequest.model_validate_json('{"customer_id": "a", "monthly_charges": 70}')
    assert r.monthly_charges == 70.0


def test_batch_bounds() -> None:
    with pytest.raises(ValidationError):
        ChurnBatchRequest(requests=[])
    with pytest.raises(ValidationError):
        ChurnBatchRequest.model_validate({"requests": [{"customer_id": "a"}] * 1001})


def test_batch_response_round_trips_both_result_kinds() -> None:
    response = ChurnBatchResponse(
        results=[
            ChurnScore(customer_id="a", churn_probability=0.25, model_version="m:1"),
            ErrorReply(customer_id="b", error="unknown_customer", message="no"),
        ]
    )
    again = ChurnBatchResponse.model_validate_json(response.model_dump_json())
    assert again == response
    assert isinstance(again.results[1], ErrorReply)


def test_score_is_a_probability() -> None:
    with pytest.raises(ValidationError):
        ChurnScore(customer_id="a", churn_probability=1.5, model_version="m:1")
