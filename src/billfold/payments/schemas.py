"""Request and response shapes of cards and payments."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from billfold.money import MoneyOut
from billfold.schemas import RequestModel, ResponseModel

PaymentMethodId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_]+$")]


class AttachPaymentMethodRequest(RequestModel):
    payment_method_id: PaymentMethodId
    make_default: bool = True


class PaymentMethodOut(ResponseModel):
    id: str
    type: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    is_default: bool
    created_at: datetime


class RemovedPaymentMethodOut(PaymentMethodOut):
    """A saved card as it was when it was removed."""

    deleted: bool


class PaymentMethodList(ResponseModel):
    items: list[PaymentMethodOut]
    default_payment_method_id: str | None


class StripeConfigOut(ResponseModel):
    publishable_key: str
    api_base: str
    processor: str
    instructions: str


class PaymentOut(ResponseModel):
    payment_intent_id: str
    status: str
    purpose: str
    amount: MoneyOut
    amount_refunded: MoneyOut
    currency: str
    payment_method_id: str | None
    failure_code: str | None
    decline_code: str | None
    failure_message: str | None
    created_at: datetime


class SetupIntentOut(ResponseModel):
    setup_intent_id: str
    client_secret: str
    status: str
    instructions: str


class PaymentAttemptOut(ResponseModel):
    """One card charge as the payment-attempt machine recorded it (operator view)."""

    id: str
    account_id: str
    purpose: str
    state: str
    amount: MoneyOut
    currency: str
    payment_method_id: str
    payment_id: str | None
    failure_reason: str | None
    failure_message: str | None
    settled_by: str | None
    created_at: datetime
    updated_at: datetime
    settled_at: datetime | None


class PaymentAttemptList(ResponseModel):
    items: list[PaymentAttemptOut]
    limit: int
    has_more: bool
