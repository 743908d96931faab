"""The one request/response schema shared by REST, Kafka, the client and the tests.

`tests/unit/test_contract.py` pins the JSON schema of every model here: a change
to it is a change to the public contract and must be made on purpose.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

#: Hard upper bound of one batch request; the service may configure a lower one.
MAX_BATCH_SIZE = 1000

CustomerId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="Customer identifier, the Feast entity key (e.g. `7590-VHVEG`).",
        examples=["7590-VHVEG"],
    ),
]
YesNo = Literal["Yes", "No"]
InternetAddOn = Literal["Yes", "No", "No internet service"]

ErrorCode = Literal[
    "unknown_customer",
    "feature_store_unavailable",
    "batch_too_large",
    "request_too_large",
    "unsupported_media_type",
    "overloaded",
    "unauthorized",
    "internal_error",
]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class CustomerFeatures(_Strict):
    """The 19 attributes of a customer; each may override the stored value."""

    gender: Literal["Female", "Male"] | None = Field(
        default=None, description="Customer gender."
    )
    senior_citizen: bool | None = Field(
        default=None, description="Whether the customer is 65 or older."
    )
    partner: YesNo | None = Field(default=None, description="Has a partner.")
    dependents: YesNo | None = Field(default=None, description="Has dependents.")
    tenure: int | None = Field(
        default=None, ge=0, le=1200, description="Months the customer has stayed."
    )
    phone_service: YesNo | None = Field(default=None, description="Has phone service.")
    multiple_lines: Literal["Yes", "No", "No phone service"] | None = Field(
        default=None, description="Has multiple phone lines."
    )
    internet_service: Literal["DSL", "Fiber optic", "No"] | None = Field(
        default=None, description="Internet service provider."
    )
    online_security: InternetAddOn | None = Field(
        default=None, description="Has the online security add-on."
    )
    online_backup: InternetAddOn | None = Field(
        default=None, description="Has the online backup add-on."
    )
    device_protection: InternetAddOn | None = Field(
        default=None, description="Has the device protection add-on."
    )
    tech_support: InternetAddOn | None = Field(
        default=None, description="Has the tech support add-on."
    )
    streaming_tv: InternetAddOn | None = Field(default=None, description="Streams TV.")
    streaming_movies: InternetAddOn | None = Field(
        default=None, description="Streams movies."
    )
    contract: Literal["Month-to-month", "One year", "Two year"] | None = Field(
        default=None, description="Contract term."
    )
    paperless_billing: YesNo | None = Field(
        default=None, description="Uses paperless billing."
    )
    payment_method: (
        Literal[
            "Electronic check",
            "Mailed check",
            "Bank transfer (automatic)",
            "Credit card (automatic)",
        ]
        | None
    ) = Field(default=None, description="Payment method.")
    monthly_charges: float | None = Field(
        default=None, ge=0, le=100_000, description="Current monthly charge."
    )
    total_charges: float | None = Field(
        default=None, ge=0, le=10_000_000, description="Total amount charged so far."
    )


#: The fields of `CustomerFeatures`: the model's inputs, what a reason names.
FEATURE_COUNT = len(CustomerFeatures.model_fields)


class ChurnRequest(CustomerFeatures):
    """Score one customer: stored features, overridden by any field given here."""

    customer_id: CustomerId
    explain: int = Field(
        default=0,
        ge=0,
        le=FEATURE_COUNT,
        description=(
            "Return the reasons of the score: the this-many customer fields that "
            "moved it most (0: none, the fast default)."
        ),
    )

    def overrides(self) -> dict[str, object]:
        """The request-time feature values that were given (not None)."""
        given = self.model_fields_set - {"customer_id", "explain"}
        if not given:  # the usual request: a customer id alone
            return {}
        return self.model_dump(include=given, exclude_none=True)


class Reason(_Strict):
    """How much one customer field moved a score, exactly (XGBoost TreeSHAP)."""

    feature: str = Field(description="The customer field, e.g. `contract`.")
    value: str | int | float | bool = Field(description="Its value in this score.")
    contribution: float = Field(
        description=(
            "Its contribution to the log-odds of churn (one-hot columns summed "
            "back to the field): > 0 raises the risk, < 0 lowers it."
        )
    )


class ChurnScore(_Strict):
    """The churn risk of one customer and the model version that produced it."""

    customer_id: CustomerId
    churn_probability: float = Field(
        ge=0.0, le=1.0, description="Probability that the customer churns."
    )
    model_version: str = Field(
        description="Model that scored, e.g. `churn-predictor:3`."
    )
    reasons: list[Reason] | None = Field(
        default=None,
        description=(
            "With `explain` = k: the k fields with the largest |contribution|, "
            "largest first. sigmoid(base_log_odds + the sum of every field's "
            "contribution) = churn_probability."
        ),
    )
    base_log_odds: float | None = Field(
        default=None,
        description="With `explain`: the model's log-odds before any field.",
    )

    @model_serializer(mode="wrap")
    def _omit_absent_reasons(
        self, handler: SerializerFunctionWrapHandler
    ) -> dict[str, Any]:
        # A score without `explain` stays byte for byte what it always was.
        data: dict[str, Any] = handler(self)
        if self.reasons is None:
            data.pop("reasons", None)
            data.pop("base_log_odds", None)
        return data


class ErrorReply(_Strict):
    """Why a request could not be scored."""

    customer_id: str | None = Field(
        default=None, description="The request's customer id, when it had one."
    )
    error: ErrorCode = Field(description="Machine-readable error code.")
    message: str = Field(description="Human-readable explanation.")
    retryable: bool = Field(
        default=False,
        description=(
            "True when the same request may succeed later unchanged (a dependency "
            "outage or overload); false when retrying cannot help."
        ),
    )


#: What one request gets back: its score, or the reason there is none.
ChurnResult = ChurnScore | ErrorReply


class ChurnBatchRequest(_Strict):
    """Score many customers at once."""

    requests: list[ChurnRequest] = Field(
        min_length=1,
        max_length=MAX_BATCH_SIZE,
        description="The customers to score, answered in the same order.",
    )


class ChurnBatchResponse(_Strict):
    """One result per request, in request order: a score or the reason for none."""

    results: list[ChurnResult] = Field(
        description="A `ChurnScore` or an `ErrorReply` for each request."
    )


def json_schemas() -> dict[str, dict[str, object]]:
    """The JSON schema of every public model (pinned by the unit tests)."""
    models: list[type[BaseModel]] = [
        ChurnRequest,
        ChurnScore,
        Reason,
        ErrorReply,
        ChurnBatchRequest,
        ChurnBatchResponse,
    ]
    return {m.__name__: m.model_json_schema() for m in models}


if __name__ == "__main__":
    import json
    import sys

    json.dump(json_schemas(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
