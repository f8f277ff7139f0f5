"""One error root for the engine; every error carries Orb's error-body fields.

Each class is also the matching built-in (``ValueError`` for 400s, ``LookupError`` for 404s),
and carries the HTTP ``status`` and Orb's ``type`` URL so that the HTTP layer maps every
error in one place.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ConstraintViolation",
    "DuplicateResourceCreation",
    "EngineError",
    "RequestValidationError",
    "ResourceConflict",
    "ResourceNotFound",
]

_ORB_ERRORS = "https://docs.withorb.com/reference/error-responses#"


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = _ORB_ERRORS + "500-internal-server-error"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str, **fields: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields

    def to_dict(self) -> dict[str, Any]:
        """Orb's RFC 7807 error body."""
        return {
            "type": self.type,
            "status": self.status,
            "title": self.title,
            "detail": self.detail,
        }


class RequestValidationError(EngineError, ValueError):
    """A request (usually an ingest batch) failed validation; nothing was written.

    >>> err = RequestValidationError("1 event failed validation",
    ...     validation_errors=[{"idempotency_key": "k1", "validation_errors": ["bad"]}])
    >>> err.validation_errors[0]["idempotency_key"]
    'k1'
    """

    status = 400
    type = _ORB_ERRORS + "400-request-validation-errors"
    title = "Request validation error"

    def __init__(self, detail: str, *, validation_errors: list[dict[str, Any]]) -> None:
        super().__init__(detail, validation_errors=validation_errors)
        self.validation_errors = validation_errors

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "validation_errors": self.validation_errors}


class ConstraintViolation(EngineError, ValueError):
    """The request is well formed but breaks a rule (a bad timeframe, a refused filter...).

    ``fields`` holds structured details, e.g. ``construct`` for a refused filter node.
    """

    status = 400
    type = _ORB_ERRORS + "400-constraint-violation"
    title = "Constraint violation"


class DuplicateResourceCreation(EngineError, ValueError):
    """A resource with the same unique identifier already exists."""

    status = 400
    type = _ORB_ERRORS + "400-duplicate-resource-creation"
    title = "Duplicate resource creation"


class ResourceNotFound(EngineError, LookupError):
    """The named resource (customer, backfill, event, metric) does not exist."""

    status = 404
    type = _ORB_ERRORS + "404-resource-not-found"
    title = "Resource not found"


class ResourceConflict(EngineError):
    """The resource is in a state that forbids the operation (e.g. closing a reverted backfill)."""

    status = 409
    type = _ORB_ERRORS + "409-resource-conflict"
    title = "Resource conflict"
