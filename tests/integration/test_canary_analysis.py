"""tools/argo-eval decides measurements as Argo Rollouts does.

Examples from Argo Rollouts' analysis docs (success and failure conditions,
Inconclusive, NaN handling, vector vs scalar) and the errors Argo reports
for a condition that cannot run. The AnalysisTemplate itself runs on a real
Prometheus in test_canary.py.
"""

from __future__ import annotations

import pytest

from tests.canary_support import evaluate

CASES = [
    # docs/features/analysis.md: the basic success condition
    ([0.97], "result[0] >= 0.95", "", "Successful"),
    ([0.90], "result[0] >= 0.95", "", "Failed"),
    # a failure condition alone: success is its negation
    ([0.2], "", "result[0] >= 0.5", "Successful"),
    ([0.7], "", "result[0] >= 0.5", "Failed"),
    # both conditions, neither true: Inconclusive (docs: "Inconclusive Runs")
    ([0.7], "result[0] >= 0.9", "result[0] < 0.5", "Inconclusive"),
    ([0.4], "result[0] >= 0.9", "result[0] < 0.5", "Failed"),
    # failure wins when both are true
    ([0.95], "result[0] >= 0.9", "result[0] > 0.8", "Failed"),
    # NaN (docs: "Handling NaN and Inf"): comparisons are false
    (["NaN"], "result[0] >= 0.95", "", "Failed"),
    (["NaN"], "isNaN(result[0]) || result[0] >= 0.95", "", "Successful"),
    (["+Inf"], "isInf(result[0])", "", "Successful"),
    # a scalar result is a number, not a list
    ("0.99", "result >= 0.95", "", "Successful"),
    # an empty vector: indexing it is an Error, len() guards it
    ([], "result[0] >= 0.95", "", "Error"),
    ([], "len(result) == 0 || result[0] <= 0.01", "", "Successful"),
    ([], "len(result) > 0 && result[0] >= 20", "false", "Inconclusive"),
    # the expression language's words and helpers
    ([3.0, 4.0], "all(result, {# > 2}) and len(result) == 2", "", "Successful"),
    ([1.0], "asInt(result[0]) == 1 and asFloat('0.5') < result[0]", "", "Successful"),
    # a condition that is not a bool is an Error
    ([1.0], "result[0] + 1", "", "Error"),
]


@pytest.mark.parametrize(("result", "success", "failure", "phase"), CASES)
def test_argo_decides_a_measurement(
    result: object, success: str, failure: str, phase: str
) -> None:
    (verdict,) = evaluate([{"result": result, "success": success, "failure": failure}])
    assert verdict["phase"] == phase, verdict
