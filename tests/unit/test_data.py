from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from predictflow.data import (
    LABEL,
    TELCO_CHURNERS,
    TELCO_CSV,
    TELCO_ROWS,
    load_telco,
    synthetic_customers,
)
from predictflow.encoding import CATEGORICAL, FEATURES, encode_columns
from predictflow.errors import DataIntegrityError


def test_telco_loads_with_its_known_shape() -> None:
    df = load_telco()
    assert len(df) == TELCO_ROWS == 7043
    assert int(df[LABEL].sum()) == TELCO_CHURNERS == 1869
    assert list(df.columns) == ["customer_id", *FEATURES, LABEL]
    assert df.loc[df["customer_id"] == "7590-VHVEG", "tenure"].item() == 1


def test_blank_total_charges_are_new_customers_at_zero() -> None:
    df = load_telco()
    new = df[df["tenure"] == 0]
    assert len(new) == 11
    assert (new["total_charges"] == 0.0).all()
    assert not df["total_charges"].isna().any()


def test_a_changed_file_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "telco.csv"
    shutil.copy(TELCO_CSV, copy)
    with copy.open("a") as f:
        f.write(
            "9999-XXXXX,Male,0,No,No,1,No,No phone service,DSL,No,No,No,No,No,No,"
            "Month-to-month,Yes,Mailed check,20.0,20.0,No\n"
        )
    with pytest.raises(DataIntegrityError, match="sha256"):
        load_telco(copy)


def test_synthetic_customers_share_the_schema_and_are_seeded() -> None:
    a = synthetic_customers(5000, seed=1)
    b = synthetic_customers(5000, seed=1)
    c = synthetic_customers(5000, seed=2)
    assert list(a.columns) == list(load_telco().columns)
    assert a.equals(b)
    assert not a.equals(c)
    assert a["customer_id"].is_unique
    for name, values in CATEGORICAL.items():
        assert set(a[name]) <= set(values), name
    encode_columns({name: a[name].tolist() for name in FEATURES})  # encodable


def test_synthetic_customers_are_consistent() -> None:
    df = synthetic_customers(20_000, seed=3)
    no_net = df["internet_service"] == "No"
    assert (df.loc[no_net, "tech_support"] == "No internet service").all()
    assert (df.loc[~no_net, "tech_support"] != "No internet service").all()
    no_phone = df["phone_service"] == "No"
    assert (df.loc[no_phone, "multiple_lines"] == "No phone service").all()
    assert (df.loc[df["tenure"] == 0, "total_charges"] == 0).all()
    m2m = df.loc[df["contract"] == "Month-to-month", LABEL].mean()
    two = df.loc[df["contract"] == "Two year", LABEL].mean()
    assert m2m > two


def test_synthetic_id_ranges_are_disjoint() -> None:
    a = synthetic_customers(100, seed=0, offset=0)
    b = synthetic_customers(100, seed=0, offset=100)
    assert not set(a["customer_id"]) & set(b["customer_id"])
