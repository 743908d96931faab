"""Feast definitions of the customer features the churn model reads.

The source parquet is written by `predictflow bootstrap` from the committed
Telco data set (one row per customer, stamped with the time it was written).
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Bool, Float64, Int64, String

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="A telco customer, e.g. 7590-VHVEG.",
)

customer_stats_source = FileSource(
    name="customer_stats_source",
    path="data/customers.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)

_CATEGORICAL = [
    "gender",
    "partner",
    "dependents",
    "phone_service",
    "multiple_lines",
    "internet_service",
    "online_security",
    "online_backup",
    "device_protection",
    "tech_support",
    "streaming_tv",
    "streaming_movies",
    "contract",
    "paperless_billing",
    "payment_method",
]

customer_stats_fv = FeatureView(
    name="customer_stats_fv",
    entities=[customer],
    # Zero: a customer's attributes hold until they change.
    ttl=timedelta(0),
    schema=[
        *(Field(name=name, dtype=String) for name in _CATEGORICAL),
        Field(name="senior_citizen", dtype=Bool),
        Field(name="tenure", dtype=Int64),
        Field(name="monthly_charges", dtype=Float64),
        Field(name="total_charges", dtype=Float64),
    ],
    source=customer_stats_source,
    online=True,
    tags={"owner": "predictflow"},
)

churn_model_v1 = FeatureService(
    name="churn_model_v1",
    features=[customer_stats_fv],
    description="Every feature of churn-predictor (the 19 Telco attributes).",
)
