"""The error hierarchy, and its one mapping to HTTP status codes and error codes."""

from __future__ import annotations

from http import HTTPStatus

from predictflow.contract import ErrorCode, ErrorReply


class PredictFlowError(Exception):
    """Base of every error the scoring core raises on purpose."""

    code: ErrorCode = "internal_error"
    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    #: The same request may succeed later, unchanged (outage, overload).
    retryable: bool = False

    def __init__(self, message: str, *, customer_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.customer_id = customer_id

    def to_reply(self) -> ErrorReply:
        """The `ErrorReply` a caller receives for this error."""
        return ErrorReply(
            customer_id=self.customer_id,
            error=self.code,
            message=self.message,
            retryable=self.retryable,
        )


class UnknownCustomer(PredictFlowError):
    """The customer has no stored features and the request did not give them all."""

    code: ErrorCode = "unknown_customer"
    status = HTTPStatus.NOT_FOUND


class FeatureStoreUnavailable(PredictFlowError):
    """The online feature store could not be read."""

    code: ErrorCode = "feature_store_unavailable"
    status = HTTPStatus.SERVICE_UNAVAILABLE
    retryable = True


class BatchTooLarge(PredictFlowError):
    """A batch holds more customers than the service is configured to score."""

    code: ErrorCode = "batch_too_large"
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class RequestTooLarge(PredictFlowError):
    """A request body is larger than the service reads."""

    code: ErrorCode = "request_too_large"
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UnsupportedMediaType(PredictFlowError):
    """A scoring request whose body is not JSON."""

    code: ErrorCode = "unsupported_media_type"
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class Overloaded(PredictFlowError):
    """The worker already holds as many requests as it is configured to."""

    code: ErrorCode = "overloaded"
    status = HTTPStatus.SERVICE_UNAVAILABLE
    retryable = True


class Unauthorized(PredictFlowError):
    """No bearer token, or one that is not (or no longer) in the tokens file."""

    code: ErrorCode = "unauthorized"
    status = HTTPStatus.UNAUTHORIZED


class ScoringFailed(PredictFlowError):
    """Scoring one request raised: e.g. a stored row the model cannot encode.

    Its message is safe to show a caller; the cause is logged, not returned.
    """


class ModelUnavailable(PredictFlowError):
    """No model could be loaded (not trained, not imported, or unreadable)."""


class DataIntegrityError(PredictFlowError):
    """A data file is not the one the project expects (checksum or schema)."""


_STATUS: dict[str, HTTPStatus] = {
    cls.code: cls.status
    for cls in (
        UnknownCustomer,
        FeatureStoreUnavailable,
        BatchTooLarge,
        RequestTooLarge,
        UnsupportedMediaType,
        Overloaded,
        Unauthorized,
    )
}


def http_status(code: ErrorCode) -> HTTPStatus:
    """The HTTP status of an error code: the one mapping the REST API uses."""
    return _STATUS.get(code, HTTPStatus.INTERNAL_SERVER_ERROR)
