"""The IBM Telco Customer Churn data set, and a synthetic one of the same schema."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from predictflow.encoding import CATEGORICAL, FEATURES
from predictflow.errors import DataIntegrityError

TELCO_CSV = Path(__file__).resolve().parent.parent / "data" / "telco_customer_churn.csv"
TELCO_SHA256 = "88be4b93fbe0cc83421af1c503794c97c342eca914c1576db7c276e61d61358a"
TELCO_ROWS = 7043
TELCO_CHURNERS = 1869

#: CSV column -> feature name.
_COLUMNS = {
    "customerID": "customer_id",
    "gender": "gender",
    "SeniorCitizen": "senior_citizen",
    "Partner": "partner",
    "Dependents": "dependents",
    "tenure": "tenure",
    "PhoneService": "phone_service",
    "MultipleLines": "multiple_lines",
    "InternetService": "internet_service",
    "OnlineSecurity": "online_security",
    "OnlineBackup": "online_backup",
    "DeviceProtection": "device_protection",
    "TechSupport": "tech_support",
    "StreamingTV": "streaming_tv",
    "StreamingMovies": "streaming_movies",
    "Contract": "contract",
    "PaperlessBilling": "paperless_billing",
    "PaymentMethod": "payment_method",
    "MonthlyCharges": "monthly_charges",
    "TotalCharges": "total_charges",
    "Churn": "churn",
}
LABEL = "churn"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_telco(path: Path = TELCO_CSV) -> pd.DataFrame:
    """Load and check the Telco data set: `customer_id`, the 19 features, `churn`.

    `total_charges` is blank for the 11 customers with zero tenure; they have
    not been billed yet, so it is read as 0.0.
    """
    actual = sha256_of(path)
    if actual != TELCO_SHA256:
        raise DataIntegrityError(
            f"{path}: sha256 {actual} is not the expected {TELCO_SHA256}"
        )
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(raw.columns) != list(_COLUMNS):
        raise DataIntegrityError(f"{path}: unexpected columns {list(raw.columns)}")
    df = raw.rename(columns=_COLUMNS)
    total = df["total_charges"].str.strip()
    blank = total == ""
    if (df.loc[blank, "tenure"] != "0").any():
        raise DataIntegrityError(f"{path}: blank TotalCharges for a tenured customer")
    df["total_charges"] = pd.to_numeric(total.mask(blank, "0"))
    df["monthly_charges"] = pd.to_numeric(df["monthly_charges"])
    df["tenure"] = pd.to_numeric(df["tenure"]).astype("int64")
    df["senior_citizen"] = df["senior_citizen"].map({"0": False, "1": True})
    df[LABEL] = df[LABEL].map({"No": 0, "Yes": 1}).astype("int64")
    _check(df)
    return df


def _check(df: pd.DataFrame) -> None:
    for name, values in CATEGORICAL.items():
        unknown = set(df[name].unique()) - set(values)
        if unknown:
            raise DataIntegrityError(f"{name}: values outside the contract {unknown}")
    if df[list(FEATURES)].isna().any().any():
        raise DataIntegrityError("missing feature values")
    if df["customer_id"].duplicated().any():
        raise DataIntegrityError("duplicate customer ids")


def _customer_ids(n: int, offset: int) -> list[str]:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    ids = []
    for i in range(offset, offset + n):
        digits, rest = i % 10_000, i // 10_000
        word = []
        for _ in range(5):
            rest, r = divmod(rest, 26)
            word.append(letters[r])
        ids.append(f"{digits:04d}-{''.join(word)}")
    return ids


def synthetic_customers(n: int, seed: int = 0, offset: int = 0) -> pd.DataFrame:
    """`n` synthetic customers with the Telco schema, label included.

    Seeded and vectorised (10^6 rows in a few seconds). Services stay
    consistent (no add-ons without internet, no extra lines without phone), and
    churn follows the Telco data's main drivers: short tenure, month-to-month
    contracts, fiber and electronic checks raise it. Ids start at `offset`, so
    calls with disjoint ranges give disjoint customers.
    """
    rng = np.random.default_rng(seed)

    def pick(values: tuple[str, ...], p: list[float]) -> np.ndarray:
        return rng.choice(np.array(values, dtype=object), size=n, p=p)

    df = pd.DataFrame({"customer_id": _customer_ids(n, offset)})
    df["gender"] = pick(CATEGORICAL["gender"], [0.5, 0.5])
    df["senior_citizen"] = rng.random(n) < 0.16
    df["partner"] = pick(CATEGORICAL["partner"], [0.48, 0.52])
    df["dependents"] = pick(CATEGORICAL["dependents"], [0.3, 0.7])
    df["tenure"] = rng.integers(0, 73, size=n)
    phone = rng.random(n) < 0.9
    df["phone_service"] = np.where(phone, "Yes", "No")
    df["multiple_lines"] = np.where(
        phone, pick(("Yes", "No"), [0.47, 0.53]), "No phone service"
    )
    internet = pick(CATEGORICAL["internet_service"], [0.34, 0.44, 0.22])
    df["internet_service"] = internet
    has_net = internet != "No"
    for name, p_yes in (
        ("online_security", 0.37),
        ("online_backup", 0.44),
        ("device_protection", 0.44),
        ("tech_support", 0.37),
        ("streaming_tv", 0.49),
        ("streaming_movies", 0.5),
    ):
        df[name] = np.where(
            has_net, pick(("Yes", "No"), [p_yes, 1 - p_yes]), "No internet service"
        )
    df["contract"] = pick(CATEGORICAL["contract"], [0.55, 0.21, 0.24])
    df["paperless_billing"] = pick(CATEGORICAL["paperless_billing"], [0.59, 0.41])
    df["payment_method"] = pick(CATEGORICAL["payment_method"], [0.34, 0.23, 0.22, 0.21])
    monthly = (
        20.0
        + np.where(phone, 5.0, 0.0)
        + np.where(df["multiple_lines"] == "Yes", 10.0, 0.0)
        + np.select([internet == "DSL", internet == "Fiber optic"], [25.0, 50.0], 0.0)
        + rng.normal(0.0, 5.0, size=n)
    ).clip(18.0, 120.0)
    df["monthly_charges"] = monthly.round(2)
    df["total_charges"] = (df["tenure"] * monthly * rng.uniform(0.95, 1.05, n)).round(2)
    logit = (
        -1.0
        - 0.04 * df["tenure"].to_numpy()
        + np.select(
            [df["contract"] == "Month-to-month", df["contract"] == "Two year"],
            [1.2, -1.5],
            0.0,
        )
        + np.where(internet == "Fiber optic", 0.8, 0.0)
        + np.where(df["payment_method"] == "Electronic check", 0.5, 0.0)
        + np.where(df["senior_citizen"], 0.3, 0.0)
    )
    df[LABEL] = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype("int64")
    return df
