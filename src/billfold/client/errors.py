"""Typed exceptions of the SDK, built from the API's error envelope.

Every refusal is `{"error": {"code", "message", "details", "request_id"}}`; `raise_for`
turns one into the exception class of its code (`error_class`), so callers catch
`PaymentDeclined` or `NotFound` instead of comparing strings. A code the SDK does not know
(a newer server) is a plain `BillfoldError` (a `ServerError` when the status is 5xx).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from billfold.errors import CATALOGUE, ErrorCode

__all__ = [
    "ERROR_CLASSES",
    "APIConnectionError",
    "AuthenticationRequired",
    "BillfoldError",
    "CardDeclined",
    "CheckoutExpired",
    "CheckoutNotCompleted",
    "Conflict",
    "Gone",
    "IdempotencyConflict",
    "InsufficientFunds",
    "InvalidRequest",
    "NotFound",
    "PaymentDeclined",
    "PermissionDenied",
    "RateLimited",
    "ServerError",
    "Unauthenticated",
    "error_class",
]


class BillfoldError(Exception):
    """A refusal of the Billfold API (or of the card processor's tokenization API)."""

    def __init__(
        self,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        status: int | None = None,
        request_id: str | None = None,
        *,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.status = status
        self.request_id = request_id
        self.data = data  # the envelope's `data` next to the error (a 402 after a charge)
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def error_code(self) -> ErrorCode | None:
        """The code as a catalogue member, None for a code this SDK does not know."""
        try:
            return ErrorCode(self.code)
        except ValueError:
            return None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"message={self.message!r}, request_id={self.request_id!r})"
        )


class APIConnectionError(BillfoldError):
    """The request got no answer (timeout, connection refused or reset) after every retry."""


class InvalidRequest(BillfoldError):
    """400/422: a field, parameter or header is missing or invalid (`details["field"]`)."""


class Unauthenticated(BillfoldError):
    """401: no valid token (unauthenticated, token_revoked, token_expired, …)."""


class PermissionDenied(BillfoldError):
    """403: these credentials do not allow the request."""


class NotFound(BillfoldError):
    """404: no such object (or not this account's): not_found and every *_not_found."""


class Conflict(BillfoldError):
    """409: the request conflicts with the object's current state."""


class Gone(BillfoldError):
    """410: the object existed but can no longer be used."""


class PaymentDeclined(BillfoldError):
    """402: a card charge (or saving a card) failed; `payment` is what was recorded."""

    @property
    def decline_code(self) -> str | None:
        value = self.details.get("decline_code")
        if value is None and isinstance(self.data, Mapping):
            error = self.data.get("error")
            if isinstance(error, Mapping):
                value = (error.get("details") or {}).get("decline_code")
        return None if value is None else str(value)

    @property
    def payment(self) -> dict[str, Any] | None:
        """The 402 answer's `data`: the recorded payment (or subscription) with its error."""
        return dict(self.data) if isinstance(self.data, Mapping) else None


class CardDeclined(PaymentDeclined):
    """402 card_declined: the processor refused to save the card (`details["reason"]`)."""


class AuthenticationRequired(PaymentDeclined):
    """402: the card needs 3-D Secure, which an off-session charge cannot do. Forward
    `payment_url` to the card holder; confirm with `session_id`."""

    @property
    def payment_url(self) -> str | None:
        value = self.details.get("payment_url")
        return None if value is None else str(value)

    @property
    def session_id(self) -> str | None:
        value = self.details.get("session_id")
        return None if value is None else str(value)


class InsufficientFunds(BillfoldError):
    """402: the wallet (or its refundable part) cannot cover the amount; nothing moved."""

    def _amount(self, name: str) -> Decimal | None:
        value = self.details.get(name)
        return None if value is None else Decimal(str(value))

    @property
    def balance(self) -> Decimal | None:
        return self._amount("balance")

    @property
    def withdrawable(self) -> Decimal | None:
        return self._amount("withdrawable")


class CheckoutNotCompleted(Conflict):
    """409: the human has not paid the payment link yet; poll again later."""


class CheckoutExpired(Gone):
    """410: the payment link expired unpaid; create a new one."""


class IdempotencyConflict(BillfoldError):
    """The Idempotency-Key was used with another request (422 idempotency_key_reused), or
    its first request is still running (409 idempotency_request_in_progress)."""


class RateLimited(BillfoldError):
    """429: too many attempts; `retry_after` seconds until the window allows another."""

    @property
    def retry_after(self) -> float | None:
        header = self.headers.get("retry-after") or self.headers.get("Retry-After")
        value: Any = header if header is not None else self.details.get("retry_after_seconds")
        try:
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None


class ServerError(BillfoldError):
    """5xx: the server (or the payment processor behind it) failed; retried by the SDK."""


_BY_STATUS: dict[int, type[BillfoldError]] = {
    400: InvalidRequest,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: InvalidRequest,
    429: RateLimited,
}

_BY_CODE: dict[ErrorCode, type[BillfoldError]] = {
    ErrorCode.PAYMENT_DECLINED: PaymentDeclined,
    ErrorCode.PAYMENT_METHOD_UNAVAILABLE: PaymentDeclined,
    ErrorCode.CARD_DECLINED: CardDeclined,
    ErrorCode.AUTHENTICATION_REQUIRED: AuthenticationRequired,
    ErrorCode.INSUFFICIENT_FUNDS: InsufficientFunds,
    ErrorCode.CHECKOUT_NOT_COMPLETED: CheckoutNotCompleted,
    ErrorCode.CHECKOUT_EXPIRED: CheckoutExpired,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: IdempotencyConflict,
    ErrorCode.IDEMPOTENCY_REQUEST_IN_PROGRESS: IdempotencyConflict,
}


def _class_of(code: ErrorCode) -> type[BillfoldError]:
    if code in _BY_CODE:
        return _BY_CODE[code]
    status = CATALOGUE[code].status
    if status is None:
        return BillfoldError
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, BillfoldError)


# Every catalogue code and the exception class the SDK raises for it.
ERROR_CLASSES: Mapping[ErrorCode, type[BillfoldError]] = {
    code: _class_of(code) for code in ErrorCode
}


def error_class(code: str | ErrorCode, status: int | None = None) -> type[BillfoldError]:
    """The exception class of an error code; BillfoldError for an unknown code (ServerError
    when the status is 5xx, so unknown server failures are still retried and caught)."""
    try:
        return ERROR_CLASSES[ErrorCode(code)]
    except ValueError:
        if status is not None and status >= 500:
            return ServerError
        return BillfoldError


def from_status(status: int) -> type[BillfoldError]:
    """The class for an answer that carries no error envelope (a proxy's 502 page)."""
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, BillfoldError)
