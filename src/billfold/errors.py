"""Billfold's error catalogue and exception hierarchy: every rejection has a stable code.

`ErrorCode` names every code the API can answer; `CATALOGUE` gives each its HTTP status,
its meaning and the fields it may put in `details`. The status of a raised error comes
from the catalogue, never from the raise site. Raise sites name their code
(`raise Conflict("…", code=ErrorCode.SUBSCRIPTION_EXISTS, details={…})`), so a typo is a
type error, and the exception classes group codes for callers that catch them.
`api/errors.py` maps these to the spec's envelope in one place. The catalogue is
published in the OpenAPI document and in docs/ERRORS.md (`python -m billfold.errors`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class ErrorCode(StrEnum):
    # The request itself and HTTP-level refusals
    BAD_REQUEST = "bad_request"
    INVALID_REQUEST = "invalid_request"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    SCOPE_MISSING = "scope_missing"
    OPERATOR_KEY_NOT_FOUND = "operator_key_not_found"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    GONE = "gone"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    HTTP_ERROR = "http_error"
    INTERNAL_ERROR = "internal_error"
    PROCESSOR_ERROR = "processor_error"
    SERVICE_UNAVAILABLE = "service_unavailable"
    WEBHOOK_SIGNATURE_INVALID = "webhook_signature_invalid"
    # Accounts, tokens and logins
    INVALID_CREDENTIALS = "invalid_credentials"
    TOKEN_REVOKED = "token_revoked"  # noqa: S105 (a code, not a secret)
    TOKEN_EXPIRED = "token_expired"  # noqa: S105
    ACCOUNT_SUSPENDED = "account_suspended"
    ACCOUNT_EXISTS = "account_exists"
    ACCOUNT_NOT_FOUND = "account_not_found"
    TEST_CLOCK_UNAVAILABLE = "test_clock_unavailable"
    TEST_CLOCK_NOT_FOUND = "test_clock_not_found"
    SANDBOX_ONLY = "sandbox_only"
    # Idempotency
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IDEMPOTENCY_REQUEST_IN_PROGRESS = "idempotency_request_in_progress"
    # Wallet, cards and payments
    INSUFFICIENT_FUNDS = "insufficient_funds"
    PAYMENT_DECLINED = "payment_declined"
    AUTHENTICATION_REQUIRED = "authentication_required"
    CARD_DECLINED = "card_declined"
    INVALID_CARD = "invalid_card"
    PAYMENT_METHOD_REQUIRED = "payment_method_required"
    PAYMENT_METHOD_NOT_FOUND = "payment_method_not_found"
    PAYMENT_METHOD_UNAVAILABLE = "payment_method_unavailable"
    PAYMENT_METHOD_IN_USE = "payment_method_in_use"
    PAYMENT_NOT_FOUND = "payment_not_found"
    NOT_REFUNDABLE = "not_refundable"
    REFUND_EXCEEDS_PAYMENT = "refund_exceeds_payment"
    # Usage holds
    HOLD_NOT_FOUND = "hold_not_found"
    HOLD_NOT_ACTIVE = "hold_not_active"
    HOLD_AMOUNT_EXCEEDED = "hold_amount_exceeded"
    # Checkout (payment links)
    CHECKOUT_NOT_FOUND = "checkout_not_found"
    CHECKOUT_PURPOSE_MISMATCH = "checkout_purpose_mismatch"
    CHECKOUT_NOT_COMPLETED = "checkout_not_completed"
    CHECKOUT_EXPIRED = "checkout_expired"
    # Coupons
    COUPON_NOT_FOUND = "coupon_not_found"
    COUPON_EXPIRED = "coupon_expired"
    COUPON_NOT_YET_VALID = "coupon_not_yet_valid"
    COUPON_ALREADY_REDEEMED = "coupon_already_redeemed"
    COUPON_EXHAUSTED = "coupon_exhausted"
    PURCHASE_BELOW_MINIMUM = "purchase_below_minimum"
    COUPON_CODE_TAKEN = "coupon_code_taken"
    CURRENCY_MISMATCH = "currency_mismatch"
    # Invoices
    INVOICE_NOT_FOUND = "invoice_not_found"
    INVALID_SIGNATURE = "invalid_signature"
    LINK_EXPIRED = "link_expired"
    # Plans and subscriptions
    PLAN_NOT_FOUND = "plan_not_found"
    PLAN_NOT_AVAILABLE = "plan_not_available"
    PLAN_UNCHANGED = "plan_unchanged"
    SUBSCRIPTION_NOT_FOUND = "subscription_not_found"
    SUBSCRIPTION_EXISTS = "subscription_exists"
    ADDON_REQUIRES_SUBSCRIPTION = "addon_requires_subscription"
    SUBSCRIPTION_NOT_ACTIVE = "subscription_not_active"
    SUBSCRIPTION_ALREADY_PAUSED = "subscription_already_paused"
    SUBSCRIPTION_NOT_PAUSED = "subscription_not_paused"
    SUBSCRIPTION_PAYMENT_PENDING = "subscription_payment_pending"
    SUBSCRIPTION_CREDITS_HELD = "subscription_credits_held"
    NOTHING_TO_FIX = "nothing_to_fix"
    # Webhooks
    WEBHOOK_ENDPOINT_NOT_FOUND = "webhook_endpoint_not_found"
    WEBHOOK_DELIVERY_NOT_FOUND = "webhook_delivery_not_found"
    WEBHOOK_URL_NOT_ALLOWED = "webhook_url_not_allowed"


@dataclass(frozen=True)
class ErrorSpec:
    """One catalogue entry. `status` None: the HTTP status of the refusal it stands for."""

    code: ErrorCode
    status: int | None
    meaning: str
    details: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "code": self.code.value,
            "status": self.status,
            "meaning": self.meaning,
            "details": list(self.details),
        }


_C = ErrorCode
_SPECS = [
    ErrorSpec(_C.BAD_REQUEST, 400, "The request could not be read (a malformed form body)."),
    ErrorSpec(
        _C.INVALID_REQUEST,
        422,
        "A body field, parameter or header is missing or invalid; `field` names it, "
        "`errors` lists every schema violation ({field, location, message}).",
        ("field", "errors"),
    ),
    ErrorSpec(_C.UNAUTHENTICATED, 401, "No valid agent token or admin key was sent."),
    ErrorSpec(_C.FORBIDDEN, 403, "The credentials sent do not allow this request."),
    ErrorSpec(
        _C.SCOPE_MISSING,
        403,
        "The operator key lacks the endpoint's scope; `scope` names it (a key with `admin` "
        "may do everything).",
        ("scope",),
    ),
    ErrorSpec(_C.OPERATOR_KEY_NOT_FOUND, 404, "No such operator key.", ("key_id",)),
    ErrorSpec(_C.NOT_FOUND, 404, "No such endpoint, or no such object."),
    ErrorSpec(_C.METHOD_NOT_ALLOWED, 405, "The endpoint does not take this HTTP method."),
    ErrorSpec(_C.CONFLICT, 409, "The request conflicts with the current state of an object."),
    ErrorSpec(_C.GONE, 410, "The object existed but can no longer be used."),
    ErrorSpec(_C.PAYLOAD_TOO_LARGE, 413, "The request body is larger than the server accepts."),
    ErrorSpec(_C.UNSUPPORTED_MEDIA_TYPE, 415, "The request body's content type is not accepted."),
    ErrorSpec(
        _C.RATE_LIMITED,
        429,
        "Too many attempts (failed logins, for one) in the current window; retry after "
        "`retry_after_seconds`, also sent as Retry-After.",
        ("retry_after_seconds",),
    ),
    ErrorSpec(
        _C.HTTP_ERROR,
        None,
        "Any other HTTP-level refusal, answered with that refusal's own status.",
    ),
    ErrorSpec(
        _C.INTERNAL_ERROR,
        500,
        "An unexpected server error (a bug); `request_id` finds it in the server's log.",
    ),
    ErrorSpec(
        _C.PROCESSOR_ERROR,
        502,
        "The payment processor could not be reached or answered unexpectedly.",
    ),
    ErrorSpec(
        _C.SERVICE_UNAVAILABLE,
        503,
        "The database is out of reach for now (restarting, failing over, timing out): "
        "retry after `retry_after_seconds`, also sent as Retry-After, with the same "
        "Idempotency-Key (a write may or may not have been made; the key makes the retry "
        "safe).",
        ("retry_after_seconds",),
    ),
    ErrorSpec(_C.INVALID_CREDENTIALS, 401, "Wrong email or password at login."),
    ErrorSpec(_C.TOKEN_REVOKED, 401, "The agent token has been revoked."),
    ErrorSpec(_C.TOKEN_EXPIRED, 401, "The agent token has expired; log in again."),
    ErrorSpec(_C.ACCOUNT_SUSPENDED, 401, "The account is suspended: its tokens and logins fail."),
    ErrorSpec(_C.ACCOUNT_EXISTS, 409, "An account with this email already exists."),
    ErrorSpec(_C.ACCOUNT_NOT_FOUND, 404, "No such account."),
    ErrorSpec(
        _C.TEST_CLOCK_UNAVAILABLE,
        403,
        "Test clocks only run in test mode (the sandbox or Stripe test keys).",
    ),
    ErrorSpec(_C.TEST_CLOCK_NOT_FOUND, 404, "No such test clock.", ("test_clock_id",)),
    ErrorSpec(
        _C.WEBHOOK_SIGNATURE_INVALID,
        400,
        "A processor webhook whose Stripe-Signature does not verify (wrong secret, "
        "tampered body, or older than 5 minutes); nothing was processed.",
    ),
    ErrorSpec(_C.SANDBOX_ONLY, 403, "Only the sandbox processor offers this (test cards)."),
    ErrorSpec(
        _C.IDEMPOTENCY_KEY_REUSED,
        422,
        "This Idempotency-Key was already used with a different request.",
        ("idempotency_key",),
    ),
    ErrorSpec(
        _C.IDEMPOTENCY_REQUEST_IN_PROGRESS,
        409,
        "A request with this Idempotency-Key is still running; retry after Retry-After.",
        ("idempotency_key",),
    ),
    ErrorSpec(
        _C.INSUFFICIENT_FUNDS,
        402,
        "The wallet balance, or the refundable purchased credit in it, cannot cover the "
        "amount; nothing was charged or moved.",
        ("balance", "amount", "withdrawable", "purchased"),
    ),
    ErrorSpec(
        _C.PAYMENT_DECLINED,
        402,
        "A card payment was attempted and failed; `data` holds what was recorded and "
        "`decline_code` says why. Also the code of an invoice's `last_payment_error`.",
        ("decline_code",),
    ),
    ErrorSpec(
        _C.AUTHENTICATION_REQUIRED,
        402,
        "The card needs its holder to authenticate (3-D Secure), which an off-session "
        "charge cannot do; nothing was charged. `payment_url` (with `session_id` and "
        "`expires_at`) is a payment link for the same amount the human can pay.",
        ("decline_code", "payment_url", "session_id", "expires_at"),
    ),
    ErrorSpec(
        _C.CARD_DECLINED,
        402,
        "The processor refused to save the card; `reason` is the processor's error code.",
        ("decline_code", "reason"),
    ),
    ErrorSpec(
        _C.INVALID_CARD,
        422,
        "The card details are not valid; `field` names the one at fault.",
        ("field",),
    ),
    ErrorSpec(
        _C.PAYMENT_METHOD_REQUIRED,
        422,
        "No payment_method_id was given and the account has no default card. Also the code "
        "of an invoice's `last_payment_error` when there was no card to charge.",
    ),
    ErrorSpec(
        _C.PAYMENT_METHOD_NOT_FOUND,
        404,
        "No such card on this account, or the processor no longer has it.",
        ("payment_method_id",),
    ),
    ErrorSpec(
        _C.PAYMENT_METHOD_IN_USE,
        409,
        "A payment on this card is in progress (a renewal's charge, say); try again shortly.",
        ("payment_method_id",),
    ),
    ErrorSpec(
        _C.PAYMENT_METHOD_UNAVAILABLE,
        402,
        "Only as the code of an invoice's `last_payment_error`: the card to charge was removed "
        "before the charge (the request itself answers payment_declined).",
    ),
    ErrorSpec(
        _C.PAYMENT_NOT_FOUND, 404, "No such payment on this account.", ("payment_intent_id",)
    ),
    ErrorSpec(_C.NOT_REFUNDABLE, 409, "Only a succeeded wallet funding can be refunded."),
    ErrorSpec(
        _C.REFUND_EXCEEDS_PAYMENT,
        409,
        "The refund is zero or more than what is left of the payment.",
        ("refundable",),
    ),
    ErrorSpec(_C.HOLD_NOT_FOUND, 404, "No such usage hold (on this account).", ("hold_id",)),
    ErrorSpec(
        _C.HOLD_NOT_ACTIVE,
        409,
        "The usage hold was already captured, released or expired (`status` says which); "
        "nothing was moved.",
        ("hold_id", "status"),
    ),
    ErrorSpec(
        _C.HOLD_AMOUNT_EXCEEDED,
        409,
        "The capture is larger than the usage hold; nothing was moved.",
        ("hold_id", "held", "amount"),
    ),
    ErrorSpec(_C.CHECKOUT_NOT_FOUND, 404, "No such checkout session.", ("session_id",)),
    ErrorSpec(
        _C.CHECKOUT_PURPOSE_MISMATCH,
        409,
        "The checkout session was created for another purpose than this confirmation.",
    ),
    ErrorSpec(
        _C.CHECKOUT_NOT_COMPLETED,
        409,
        "The human has not paid the payment link yet; poll again later.",
        ("session_id", "status"),
    ),
    ErrorSpec(
        _C.CHECKOUT_EXPIRED,
        410,
        "The payment link expired before it was paid; create a new one.",
        ("session_id", "expires_at"),
    ),
    ErrorSpec(
        _C.COUPON_NOT_FOUND,
        404,
        "No coupon with this code. Coupon codes are also returned as data by coupon "
        "validation (`valid: false`).",
    ),
    ErrorSpec(_C.COUPON_EXPIRED, 410, "The coupon has expired."),
    ErrorSpec(_C.COUPON_NOT_YET_VALID, 422, "The coupon is not valid yet.", ("valid_from",)),
    ErrorSpec(_C.COUPON_ALREADY_REDEEMED, 409, "This account has already redeemed this coupon."),
    ErrorSpec(_C.COUPON_EXHAUSTED, 409, "The coupon has been fully redeemed."),
    ErrorSpec(
        _C.PURCHASE_BELOW_MINIMUM,
        422,
        "The coupon needs a larger card purchase than the one given.",
        ("min_purchase",),
    ),
    ErrorSpec(_C.COUPON_CODE_TAKEN, 409, "A coupon with this code already exists."),
    ErrorSpec(
        _C.CURRENCY_MISMATCH,
        422,
        "The coupon or plan is in another currency than the account's.",
        ("currency", "coupon_currency", "plan_id", "plan_currency"),
    ),
    ErrorSpec(_C.INVOICE_NOT_FOUND, 404, "No such invoice.", ("invoice_id",)),
    ErrorSpec(_C.INVALID_SIGNATURE, 403, "The signed invoice link is not valid."),
    ErrorSpec(_C.LINK_EXPIRED, 410, "The signed invoice link has expired; ask for a new one."),
    ErrorSpec(_C.PLAN_NOT_FOUND, 404, "No such plan.", ("plan_id",)),
    ErrorSpec(
        _C.PLAN_NOT_AVAILABLE,
        422,
        "The plan is archived, or of a kind only the operator subscribes accounts to.",
        ("plan_id", "kind"),
    ),
    ErrorSpec(_C.PLAN_UNCHANGED, 409, "The subscription is already on this plan.", ("plan_id",)),
    ErrorSpec(_C.SUBSCRIPTION_NOT_FOUND, 404, "No such subscription.", ("subscription_id",)),
    ErrorSpec(
        _C.SUBSCRIPTION_EXISTS,
        409,
        "The account already has a subscription in this place (change its plan or cancel "
        "it); after a paid subscription link, the payment went to the wallet instead.",
        ("subscription_id", "status", "plan_id", "session_id", "payment_intent_id"),
    ),
    ErrorSpec(
        _C.ADDON_REQUIRES_SUBSCRIPTION,
        409,
        "Add-on plans need an active subscription to a normal plan first.",
        ("plan_id",),
    ),
    ErrorSpec(
        _C.SUBSCRIPTION_NOT_ACTIVE,
        409,
        "The subscription's status does not allow this change.",
        ("subscription_id", "status"),
    ),
    ErrorSpec(
        _C.SUBSCRIPTION_ALREADY_PAUSED,
        409,
        "The subscription is already paused.",
        ("subscription_id", "status"),
    ),
    ErrorSpec(
        _C.SUBSCRIPTION_NOT_PAUSED,
        409,
        "Only a paused subscription can be resumed.",
        ("subscription_id", "status"),
    ),
    ErrorSpec(
        _C.SUBSCRIPTION_PAYMENT_PENDING,
        409,
        "A payment for this subscription is in progress; try again shortly.",
        ("subscription_id", "invoice_id"),
    ),
    ErrorSpec(
        _C.SUBSCRIPTION_CREDITS_HELD,
        409,
        "Usage holds keep some of this subscription's included credits: try again once "
        "they are captured or released.",
        ("subscription_id", "held"),
    ),
    ErrorSpec(
        _C.NOTHING_TO_FIX,
        409,
        "The subscription has no failed payment to fix.",
        ("subscription_id", "status"),
    ),
    ErrorSpec(_C.WEBHOOK_ENDPOINT_NOT_FOUND, 404, "No such webhook endpoint."),
    ErrorSpec(_C.WEBHOOK_DELIVERY_NOT_FOUND, 404, "No such webhook delivery."),
    ErrorSpec(
        _C.WEBHOOK_URL_NOT_ALLOWED,
        422,
        "The webhook URL is not http(s), carries credentials, or resolves to a non-public address.",
        ("field",),
    ),
]

CATALOGUE: Mapping[ErrorCode, ErrorSpec] = {spec.code: spec for spec in _SPECS}
if len(_SPECS) != len(CATALOGUE) or set(CATALOGUE) != set(ErrorCode):
    raise RuntimeError("the error catalogue must list every ErrorCode exactly once")


def catalogue_json() -> list[dict[str, Any]]:
    """The catalogue as published in the OpenAPI document (`x-error-catalogue`)."""
    return [spec.as_json() for spec in CATALOGUE.values()]


def render_markdown() -> str:
    """docs/ERRORS.md, generated from the catalogue."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "# Error codes",
        "",
        "<!-- Generated from src/billfold/errors.py by `python -m billfold.errors"
        " docs/ERRORS.md`; do not edit. -->",
        "",
        'Every refusal is `{"error": {"code", "message", "details", "request_id"}}` with the '
        "HTTP status below; a 402 after a card payment also carries `data`. `code` is stable; "
        "`message` is for people and may change. The same catalogue is in the OpenAPI "
        "document: `x-error-catalogue`, and the `ErrorCode` enum of `error.code`.",
        "",
        "| Code | Status | Meaning | Fields in `details` |",
        "| --- | --- | --- | --- |",
    ]
    for spec in CATALOGUE.values():
        status = str(spec.status) if spec.status is not None else "its own"
        details = ", ".join(f"`{name}`" for name in spec.details) or "none"
        lines.append(f"| `{spec.code.value}` | {status} | {cell(spec.meaning)} | {details} |")
    later = ", ".join(f"`{code.value}`" for code in CATALOGUE if code in RETRY_LATER)
    lines += [
        "",
        f"Refusals that say to try again shortly ({later}) are not stored under the "
        "request's `Idempotency-Key`: the same request, with the same key, may be sent "
        "again and runs once nothing refuses it. Every other refusal is stored and replayed.",
    ]
    return "\n".join(lines) + "\n"


# Refusals that say "try again shortly": something in flight (a payment, a hold) refuses the
# request for now. They are not stored under the request's Idempotency-Key, so the same
# request, key and all, can be sent again and run once it can.
RETRY_LATER: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.SUBSCRIPTION_PAYMENT_PENDING,
        ErrorCode.SUBSCRIPTION_CREDITS_HELD,
        ErrorCode.PAYMENT_METHOD_IN_USE,
    }
)


class BillfoldError(Exception):
    """A rejection: its `code` is an `ErrorCode`, its HTTP status the catalogue's."""

    code: ErrorCode = ErrorCode.BAD_REQUEST

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        code: ErrorCode | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        # ErrorCode(...) also refuses a bare string that is not in the catalogue.
        self.code = ErrorCode(code if code is not None else type(self).code)
        if CATALOGUE[self.code].status is None:
            raise ValueError(f"{self.code} has no status of its own and cannot be raised")
        self.headers = headers or {}

    @property
    def status_code(self) -> int:
        status = CATALOGUE[self.code].status
        assert status is not None
        return status


class InvalidRequest(BillfoldError):
    code = ErrorCode.INVALID_REQUEST


class Unauthenticated(BillfoldError):
    code = ErrorCode.UNAUTHENTICATED


class Forbidden(BillfoldError):
    code = ErrorCode.FORBIDDEN


class NotFound(BillfoldError):
    code = ErrorCode.NOT_FOUND


class Conflict(BillfoldError):
    code = ErrorCode.CONFLICT


class Gone(BillfoldError):
    code = ErrorCode.GONE


class RateLimited(BillfoldError):
    code = ErrorCode.RATE_LIMITED


class ServiceUnavailable(BillfoldError):
    code = ErrorCode.SERVICE_UNAVAILABLE

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(
            "The service is briefly unavailable (its database is out of reach); retry "
            "after Retry-After seconds with the same Idempotency-Key.",
            details={"retry_after_seconds": retry_after_seconds},
            headers={"Retry-After": str(retry_after_seconds)},
        )


class InsufficientFunds(BillfoldError):
    code = ErrorCode.INSUFFICIENT_FUNDS


class IdempotencyKeyReused(BillfoldError):
    code = ErrorCode.IDEMPOTENCY_KEY_REUSED


class IdempotencyInProgress(BillfoldError):
    code = ErrorCode.IDEMPOTENCY_REQUEST_IN_PROGRESS


class PaymentFailed(BillfoldError):
    """A payment was attempted and failed: an outcome, answered 402 with the recorded payment.

    `payment` is the public view of the recorded attempt; the envelope carries it as `data`
    with the same error object inside, as the reference client's error check reads it.
    """

    code = ErrorCode.PAYMENT_DECLINED

    def __init__(
        self,
        message: str,
        *,
        decline_code: str,
        payment: dict[str, Any] | None = None,
        code: ErrorCode | None = None,
    ) -> None:
        super().__init__(message, details={"decline_code": decline_code}, code=code)
        self.decline_code = decline_code
        self.payment = payment


class ProcessorError(BillfoldError):
    """The payment processor could not be reached or answered unexpectedly."""

    code = ErrorCode.PROCESSOR_ERROR


def error_body(
    code: ErrorCode, message: str, details: dict[str, Any], request_id: str
) -> dict[str, Any]:
    """The spec's error envelope: {"error": {code, message, details, request_id}}."""
    return {
        "error": {
            "code": code.value,
            "message": message,
            "details": details,
            "request_id": request_id,
        }
    }


def error_payload(exc: BillfoldError, request_id: str) -> dict[str, Any]:
    """The body a front end answers for `exc` (a failed payment also carries its record)."""
    body = error_body(exc.code, exc.message, exc.details, request_id)
    if isinstance(exc, PaymentFailed) and exc.payment is not None:
        body["data"] = {**exc.payment, "error": body["error"]}
    return body


def main(argv: list[str]) -> int:
    """`python -m billfold.errors [PATH]`: write the catalogue's markdown to PATH (or print it)."""
    text = render_markdown()
    if not argv:
        sys.stdout.write(text)
        return 0
    Path(argv[0]).write_text(text, encoding="utf-8")
    print(f"wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
