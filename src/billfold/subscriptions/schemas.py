"""Request and response shapes of plans and subscriptions."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, Field, HttpUrl

from billfold.money import (
    CARD_DECIMALS,
    MAX_AUTO_CHARGE,
    MIN_AUTO_CHARGE,
    USAGE_DECIMALS,
    AmountRules,
    MoneyOut,
)
from billfold.payments.schemas import PaymentMethodId
from billfold.schemas import RequestModel
from billfold.text import CleanText

PlanPrice = Annotated[Decimal, AmountRules(decimals=CARD_DECIMALS, minimum=Decimal(0))]
IncludedCredits = Annotated[Decimal, AmountRules(decimals=USAGE_DECIMALS, minimum=Decimal(0))]
ChargeAmount = Annotated[
    Decimal, AmountRules(decimals=CARD_DECIMALS, minimum=MIN_AUTO_CHARGE, maximum=MAX_AUTO_CHARGE)
]
Feature = Annotated[CleanText, Field(min_length=1, max_length=200)]
PlanId = Annotated[int, Field(ge=1, le=2_147_483_647)]


class PlanOut(BaseModel):
    id: int
    name: str
    price: MoneyOut
    currency: str
    period: str
    features: list[str]
    kind: str
    included_credits: MoneyOut | None
    trial_days: int | None
    status: str


class AutoPaymentsOut(BaseModel):
    supported: bool


class PayAsYouGoOut(BaseModel):
    available: bool
    minimum_topup_usd: MoneyOut
    auto_payments: AutoPaymentsOut


class PlansOut(BaseModel):
    subscription_plans: list[PlanOut]
    pay_as_you_go: PayAsYouGoOut


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
