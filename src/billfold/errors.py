"""Billfold's exception hierarchy: every rejection has a stable code and an HTTP status.

`api/errors.py` maps these to the spec's envelope in one place; services raise them
without knowing about HTTP beyond the status number.
"""

from __future__ import annotations

from typing import Any


class BillfoldError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidRequest(BillfoldError):
    status_code = 422
    code = "invalid_request"


class Unauthenticated(BillfoldError):
    status_code = 401
    code = "unauthenticated"


class Forbidden(BillfoldError):
    status_code = 403
    code = "forbidden"


class NotFound(BillfoldError):
    status_code = 404
    code = "not_found"


class Conflict(BillfoldError):
    status_code = 409
    code = "conflict"


class Gone(BillfoldError):
    status_code = 410
    code = "gone"


class RateLimited(BillfoldError):
    status_code = 429
    code = "rate_limited"


class InsufficientFunds(BillfoldError):
    status_code = 402
    code = "insufficient_funds"


class IdempotencyKeyReused(BillfoldError):
    status_code = 422
    code = "idempotency_key_reused"


class IdempotencyInProgress(BillfoldError):
    status_code = 409
    code = "idempotency_request_in_progress"


class PaymentFailed(BillfoldError):
    """A payment was attempted and failed: an outcome, answered 402 with the recorded payment.

    `payment` is the public view of the recorded attempt; the envelope carries it as `data`
    with the same error object inside, as the reference client's error check reads it.
    """

    status_code = 402
    code = "payment_declined"

    def __init__(
        self,
        message: str,
        *,
        decline_code: str,
        payment: dict[str, Any] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, details={"decline_code": decline_code}, code=code)
        self.decline_code = decline_code
        self.payment = payment


class ProcessorError(BillfoldError):
    """The payment processor could not be reached or answered unexpectedly."""

    status_code = 502
    code = "processor_error"
