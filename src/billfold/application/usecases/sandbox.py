"""Sandbox processor use cases behind its Stripe-compatible API: tokenize a card, confirm a
SetupIntent. They answer as Stripe does: Stripe's objects, and `StripeError` for a refusal
(`{"error": {"type", "code", "message", "param"}}`), so clients written against Stripe work
with only the base URL changed. Card numbers are checked here and never stored or logged.

The front end authenticates the publishable key and parses the form; these take the form's
fields by Stripe's names (`card[number]`, `payment_method_data[card][cvc]`, …).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel

from billfold import ratelimit
from billfold.errors import RateLimited
from billfold.processors.cards import InvalidCard
from billfold.processors.sandbox import SandboxRequestError
from billfold.schemas import ResponseModel
from billfold.services import Services

# Stripe's own error code for too many requests (Stripe's codes, not Billfold's catalogue).
STRIPE_RATE_LIMIT = "rate_limit"


class StripeError(Exception):
    """A refusal as Stripe's API answers it: `{"error": error}` with `status`."""

    def __init__(
        self, status: int, error: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(error.get("message", ""))
        self.status = status
        self.error = error
        self.headers = headers or {}

    @classmethod
    def of(cls, status: int, type_: str, message: str, **extra: Any) -> StripeError:
        return cls(status, {"type": type_, "message": message, **extra})

    @property
    def body(self) -> dict[str, Any]:
        return {"error": self.error}


class StripeCardOut(ResponseModel):
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str
    funding: str
    country: str


class StripeBillingDetailsOut(ResponseModel):
    address: dict[str, Any] | None
    email: str | None
    name: str | None
    phone: str | None


class StripePaymentMethodOut(ResponseModel):
    id: str
    object: Literal["payment_method"]
    type: Literal["card"]
    created: int
    customer: str | None
    livemode: bool
    card: StripeCardOut
    billing_details: StripeBillingDetailsOut


class StripeSetupIntentOut(ResponseModel):
    id: str
    object: Literal["setup_intent"]
    client_secret: str
    customer: str | None
    payment_method: str | None
    status: str
    usage: str
    next_action: dict[str, Any] | None
    last_setup_error: dict[str, Any] | None
    livemode: bool


class StripeErrorOut(BaseModel):
    type: str
    message: str
    code: str | None = None
    param: str | None = None
    decline_code: str | None = None
    setup_intent: StripeSetupIntentOut | None = None


class StripeErrorEnvelope(BaseModel):
    error: StripeErrorOut


def _invalid(message: str, **extra: Any) -> StripeError:
    return StripeError.of(400, "invalid_request_error", message, **extra)


def _card_error(exc: InvalidCard) -> StripeError:
    return StripeError.of(402, "card_error", exc.message, code=exc.code, param=exc.param)


def _count_tokenization(app: Services, client: str) -> None:
    """Count a card tokenization (it stores a payment method) per client address; Stripe's
    429 `rate_limit` error when over the limit."""
    settings = app.settings
    limit = ratelimit.Limit(
        f"tokenize:client:{client}",
        settings.tokenize_max_per_client,
        settings.client_window_seconds,
    )
    try:
        with app.database.transaction() as session:
            ratelimit.take(session, [limit], message="Too many card tokenizations.")
    except RateLimited as exc:
        retry_after = exc.headers["Retry-After"]
        raise StripeError(
            429,
            {
                "type": "invalid_request_error",
                "message": "Too many card tokenizations from this address; retry after "
                f"{retry_after} seconds.",
                "code": STRIPE_RATE_LIMIT,
            },
            headers={"Retry-After": retry_after},
        ) from None


def create_payment_method(
    app: Services, *, form: Mapping[str, str], client: str
) -> StripePaymentMethodOut:
    """Tokenize a card: a PaymentMethod for the sandbox's test cards' outcomes."""
    if form.get("type") != "card":
        raise _invalid("Only type=card is supported.", param="type")
    for field in ("card[number]", "card[exp_month]", "card[exp_year]"):
        if not form.get(field):
            raise _invalid(f"Missing required param: {field}.", param=field)
    _count_tokenization(app, client)
    try:
        payment_method = app.sandbox.tokenize_card(
            number=form["card[number]"],
            exp_month=form["card[exp_month]"],
            exp_year=form["card[exp_year]"],
            cvc=form.get("card[cvc]"),
        )
    except InvalidCard as exc:
        raise _card_error(exc) from None
    return StripePaymentMethodOut.model_validate(payment_method)


def confirm_setup_intent(
    app: Services, *, setup_intent_id: str, form: Mapping[str, str], client: str
) -> StripeSetupIntentOut:
    """Confirm a SetupIntent with new card fields or an existing payment method; a card
    refused on attach is a 402 whose error carries the intent."""
    card = None
    if any(k.startswith("payment_method_data[") for k in form):
        if form.get("payment_method_data[type]", "card") != "card":
            raise _invalid(
                "Only card payment methods are supported.", param="payment_method_data[type]"
            )
        card = {
            field: form.get(f"payment_method_data[card][{field}]")
            for field in ("number", "exp_month", "exp_year", "cvc")
        }
    elif not form.get("payment_method"):
        raise _invalid(
            "Give payment_method_data[card][…] fields or a payment_method.",
            param="payment_method_data",
        )
    if card is not None:
        _count_tokenization(app, client)
    try:
        intent, error = app.sandbox.confirm_setup_intent(
            setup_intent_id,
            client_secret=form.get("client_secret"),
            card=card,
            payment_method=form.get("payment_method"),
        )
    except InvalidCard as exc:
        raise _card_error(exc) from None
    except SandboxRequestError as exc:
        raise StripeError.of(
            exc.status, "invalid_request_error", exc.message, code=exc.code, param=exc.param
        ) from None
    if error is not None:
        raise StripeError(402, {**error, "setup_intent": intent})
    return StripeSetupIntentOut.model_validate(intent)
