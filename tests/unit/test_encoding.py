from __future__ import annotations

import numpy as np
import pytest

from predictflow.encoding import (
    BOOLEAN,
    CATEGORICAL,
    ENCODED_FEATURES,
    FEATURES,
    NUMERIC,
    encode_columns,
    encode_rows,
)

ROW: dict[str, object] = {
    "gender": "Female",
    "senior_citizen": True,
    "partner": "Yes",
    "dependents": "No",
    "tenure": 12,
    "phone_service": "Yes",
    "multiple_lines": "No",
    "internet_service": "Fiber optic",
    "online_security": "No",
    "online_backup": "Yes",
    "device_protection": "No",
    "tech_support": "No",
    "streaming_tv": "Yes",
    "streaming_movies": "No internet service",
    "contract": "Month-to-month",
    "paperless_billing": "Yes",
    "payment_method": "Electronic check",
    "monthly_charges": 70.5,
    "total_charges": 846.0,
}


def test_nineteen_features_split_into_kinds() -> None:
    assert len(FEATURES) == 19
    assert set(FEATURES) == set(NUMERIC) | set(BOOLEAN) | set(CATEGORICAL)
    assert CATEGORICAL["contract"] == ("Month-to-month", "One year", "Two year")
    width = len(NUMERIC) + len(BOOLEAN) + sum(len(v) for v in CATEGORICAL.values())
    assert len(ENCODED_FEATURES) == width


def test_encoding_places_values_and_one_hots() -> None:
    (x,) = encode_rows([ROW])
    cols = dict(zip(ENCODED_FEATURES, x.tolist(), strict=True))
    assert cols["tenure"] == 12
    assert cols["monthly_charges"] == pytest.approx(70.5)
    assert cols["senior_citizen"] == 1.0
    assert cols["contract=Month-to-month"] == 1.0
    assert cols["contract=Two year"] == 0.0
    assert cols["streaming_movies=No internet service"] == 1.0
    # exactly one hot per categorical feature
    assert sum(x[len(NUMERIC) + len(BOOLEAN) :]) == len(CATEGORICAL)


def test_rows_and_columns_encode_identically() -> None:
    other = {**ROW, "contract": "Two year", "tenure": 60, "senior_citizen": False}
    by_rows = encode_rows([ROW, other])
    by_cols = encode_columns({k: [ROW[k], other[k]] for k in FEATURES})
    np.testing.assert_array_equal(by_rows, by_cols)


def test_unknown_category_is_refused() -> None:
    with pytest.raises(ValueError, match="contract"):
        encode_rows([{**ROW, "contract": "Weekly"}])


def test_missing_numeric_is_refused() -> None:
    with pytest.raises(ValueError, match="tenure"):
        encode_rows([{**ROW, "tenure": None}])
