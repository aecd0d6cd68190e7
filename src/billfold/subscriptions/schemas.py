"""Request and response shapes of plans and subscriptions.

The response models are the JSON the views render (`plans.plan_view`, `views.view`), key
for key and in the same order (`ResponseModel`): build them with `model_validate(view)`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import Field, HttpUrl

from billfold.money import (
    CARD_DECIMALS,
    MAX_AUTO_CHARGE,
    MIN_AUTO_CHARGE,
    USAGE_DECIMALS,
    AmountRules,
    MoneyOut,
)
from billfold.payments.schemas import PaymentMethodId
from billfold.schemas import PlanId, RequestModel, ResponseModel
from billfold.subscriptions.states import PlanKind, PlanStatus, SubscriptionStatus
from billfold.text import CleanText

PlanPrice = Annotated[Decimal, AmountRules(decimals=CARD_DECIMALS, minimum=Decimal(0))]
IncludedCredits = Annotated[Decimal, AmountRules(decimals=USAGE_DECIMALS, minimum=Decimal(0))]
ChargeAmount = Annotated[
    Decimal, AmountRules(decimals=CARD_DECIMALS, minimum=MIN_AUTO_CHARGE, maximum=MAX_AUTO_CHARGE)
]
Feature = Annotated[CleanText, Field(min_length=1, max_length=200)]


class PlanOut(ResponseModel):
    id: int
    name: str
    price: MoneyOut
    currency: str
    period: Literal["month", "year"]
    features: list[str]
    kind: PlanKind
    included_credits: MoneyOut | None
    trial_days: int | None
    status: PlanStatus


class AutoPaymentsOut(ResponseModel):
    supported: bool


class PayAsYouGoOut(ResponseModel):
    available: bool
    minimum_topup_usd: MoneyOut
    auto_payments: AutoPaymentsOut


class PlansOut(ResponseModel):
    subscription_plans: list[PlanOut]
    pay_as_you_go: PayAsYouGoOut


class ScheduledChangeOut(ResponseModel):
    """A plan change that takes effect at the end of the current period."""

    plan_id: int
    plan_name: str
    effective_at: datetime


class LatestInvoiceOut(ResponseModel):
    id: str
    number: str | None
    status: str
    billing_reason: str | None
    total: MoneyOut
    amount_paid: MoneyOut
    attempt_count: int
    next_payment_attempt: datetime | None
    last_payment_error: dict[str, Any] | None = Field(
        description="code, decline_code and message of the last failed payment (and its "
        "payment_intent_id when a card was charged)"
    )
    payment_intent_id: str | None


class SubscriptionOut(ResponseModel):
    """Everything an agent asks about a subscription."""

    id: str
    object: Literal["subscription"]
    status: SubscriptionStatus
    kind: PlanKind
    plan_id: int
    plan: PlanOut
    current_period_start: datetime
    current_period_end: datetime
    cancel_at_period_end: bool
    canceled_at: datetime | None
    ended_at: datetime | None
    paused_at: datetime | None
    trial_end: datetime | None
    scheduled_change: ScheduledChangeOut | None
    latest_invoice: LatestInvoiceOut | None
    payment_status: str | None = Field(
        description="The latest invoice's payment: paid, processing, failed or pending (or "
        "the invoice's status once it is void or uncollectible)"
    )
    next_retry_at: datetime | None
    incomplete_expires_at: datetime | None
    created_at: datetime


class ConfirmedSubscriptionOut(SubscriptionOut):
    """The subscription a paid `subscribe` payment link started, and that link's session."""

    session_id: str


class SubscriptionListOut(ResponseModel):
    items: list[SubscriptionOut] = Field(description="Every subscription, newest first")
    active: list[SubscriptionOut] = Field(
        description="Those trialing, active, past_due, paused or unpaid"
    )


class AccountSubscriptionsOut(ResponseModel):
    items: list[SubscriptionOut]


class SubscribeLinkOut(ResponseModel):
    """A `subscribe` payment link: the plan's first period, paid by a human."""

    payment_url: str
    checkout_url: str
    session_id: str
    purpose: Literal["subscribe"]
    plan_id: int
    amount: MoneyOut
    currency: str
    expires_at: datetime
    instructions: str


class ChargeAmountOut(ResponseModel):
    payment_intent_id: str
    status: str
    amount: MoneyOut
    currency: str
    balance: MoneyOut
    transaction_id: str | None


class CreatePlanRequest(RequestModel):
    name: CleanText = Field(min_length=1, max_length=120)
    price: PlanPrice
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    period: Literal["month", "year"]
    features: list[Feature] = Field(default_factory=list, max_length=50)
    kind: Literal["normal", "addon", "enterprise"] = "normal"
    included_credits: IncludedCredits | None = None
    trial_days: int | None = Field(default=None, ge=1, le=365)


class UpdatePlanRequest(RequestModel):
    name: CleanText | None = Field(default=None, min_length=1, max_length=120)
    features: list[Feature] | None = Field(default=None, max_length=50)


class CreateSubscriptionRequest(RequestModel):
    """With payment_method_id: charged now (headless). Without: a checkout_url for a human."""

    plan_id: PlanId
    payment_method_id: PaymentMethodId | None = None
    success_url: HttpUrl | None = Field(default=None, max_length=2000)


class OperatorSubscriptionRequest(RequestModel):
    plan_id: PlanId
    payment_method_id: PaymentMethodId | None = None


class ConfirmSubscriptionCheckoutRequest(RequestModel):
    session_id: str = Field(min_length=1, max_length=64)


class ChangePlanRequest(RequestModel):
    new_plan_id: PlanId


class CancelRequest(RequestModel):
    at_period_end: bool = True


class ChargeAmountRequest(RequestModel):
    amount: ChargeAmount
    payment_method_id: PaymentMethodId | None = None
