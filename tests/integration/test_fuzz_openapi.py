"""Fuzzing from the served OpenAPI document (schemathesis) on a real `bentoml serve`.

Over 1,000 generated requests, valid and invalid, against every operation
the service documents: no server error but the documented 503, and every
answer conforms to the document (status, content type, body schema,
headers). The document itself must state the errors the scoring routes give.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devtools.processes import BentoServer, Workspace

#: Generated requests per scoring operation and mode (positive: valid per the
#: document; negative: breaking it): 4 x 260 = 1,040, plus the probes.
CASES = {GenerationMode.POSITIVE: 260, GenerationMode.NEGATIVE: 260}
PROBE_CASES = 10
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def fuzz_server(workspace: Workspace) -> Iterator[BentoServer]:
    srv = BentoServer(workspace, "fuzz").wait()
    yield srv
    srv.stop()


def test_the_document_states_the_scoring_errors(fuzz_server: BentoServer) -> None:
    spec = httpx.get(f"{fuzz_server.url}/docs.json", timeout=30).json()
    for route in ("/predict", "/predict_batch"):
        responses = spec["paths"][route]["post"]["responses"]
        assert {"200", "400", "404", "413", "415", "500", "503"} <= set(responses)
        assert "Retry-After" in responses["503"]["headers"]
    detail = spec["components"]["schemas"]["ValidationErrorReply"]["properties"]
    assert detail["detail"]["type"] == "array"


def test_fuzzing_finds_no_server_error_and_no_lie(
    fuzz_server: BentoServer, record_property: pytest.RecordProperty
) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/docs.json")
    statuses: Counter[int] = Counter()
    started = time.monotonic()

    def exchange(case: Case, negative: bool) -> None:
        response = case.call(base_url=fuzz_server.url, timeout=30)
        statuses[response.status_code] += 1
        # 503 is documented (store down or overloaded); no other 5xx may happen.
        assert response.status_code < 500 or response.status_code == 503, (
            case.as_curl_command(),
            response.status_code,
            response.text[:500],
        )
        checks = [*CHECKS, negative_data_rejection] if negative else CHECKS
        case.validate_response(response, checks=checks)

    def fuzzer(operation: Any, mode: GenerationMode, count: int) -> Any:
        negative = mode is GenerationMode.NEGATIVE

        @settings(
            max_examples=count,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: Case) -> None:
            exchange(case, negative)

        return fuzz

    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() != "POST":
            fuzzer(operation, GenerationMode.POSITIVE, PROBE_CASES)()
            continue
        for mode, count in CASES.items():
            fuzzer(operation, mode, count)()
    total = sum(statuses.values())
    record_property(
        "figure",
        f"fuzzing: {total} requests in {time.monotonic() - started:.0f} s, "
        f"statuses {dict(sorted(statuses.items()))}",
    )
    assert total >= 1000, statuses
    # Both valid and invalid requests were made and answered.
    assert statuses[200] and statuses[400]
