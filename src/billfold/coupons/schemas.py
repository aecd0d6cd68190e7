"""Request and response shapes of coupons."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import Field, RootModel, model_validator

from billfold.errors import ErrorCode
from billfold.money import (
    CARD_DECIMALS,
    MAX_PERCENT,
    MIN_FUNDING,
    ONE_CENT,
    PERCENT_DECIMALS,
    USAGE_DECIMALS,
    AmountRules,
    MoneyOut,
)
from billfold.payments.schemas import PaymentMethodId
from billfold.schemas import RequestModel, ResponseModel

CouponCode = Annotated[str, Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
PurchaseAmount = Annotated[Decimal, AmountRules(decimals=CARD_DECIMALS, minimum=MIN_FUNDING)]
CreditAmount = Annotated[Decimal, AmountRules(decimals=USAGE_DECIMALS, minimum=ONE_CENT)]
Percent = Annotated[
    Decimal, AmountRules(decimals=PERCENT_DECIMALS, minimum=ONE_CENT, maximum=MAX_PERCENT)
]


class CreateCouponRequest(RequestModel):
    code: CouponCode
    kind: Literal["credit", "bonus_percent", "bonus_fixed"]
    amount: CreditAmount | None = Field(
        default=None, description="Credit granted (credit) or bonus added (bonus_fixed)"
    )
    percent: Percent | None = Field(default=None, description="Bonus percentage (bonus_percent)")
    min_purchase: PurchaseAmount | None = None
    currency: Literal["USD", "EUR", "GBP"] = "USD"
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    max_redemptions: int | None = Field(default=None, ge=1, le=100_000_000)

    @model_validator(mode="after")
    def _kind_fields(self) -> CreateCouponRequest:
        if self.kind in ("credit", "bonus_fixed") and self.amount is None:
            raise ValueError(f"amount is required for a {self.kind} coupon")
        if self.kind == "bonus_percent" and self.percent is None:
            raise ValueError("percent is required for a bonus_percent coupon")
        if self.kind != "bonus_percent" and self.percent is not None:
            raise ValueError("percent goes with kind bonus_percent only")
        if self.kind == "bonus_percent" and self.amount is not None:
            raise ValueError("amount does not go with kind bonus_percent")
        if self.kind == "credit" and self.min_purchase is not None:
            raise ValueError("min_purchase goes with the bonus kinds only")
        for name in ("valid_from", "valid_until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} needs a timezone (e.g. 2026-12-31T23:59:59Z)")
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self


class RedeemCouponRequest(RequestModel):
    coupon_code: CouponCode
    payment_method_id: PaymentMethodId | None = None
    purchase_amount: PurchaseAmount | None = None


class CouponOut(ResponseModel):
    id: str
    code: str
    kind: str
    credit_amount: MoneyOut | None
    bonus_amount: MoneyOut | None
    bonus_percent: MoneyOut | None
    min_purchase: MoneyOut
    currency: str
    valid_from: datetime | None
    expires_at: datetime | None
    max_redemptions: int | None
    remaining_redemptions: int | None
    status: str


class CouponErrorOut(ResponseModel):
    code: ErrorCode
    message: str
    details: dict[str, Any]


class InvalidCouponOut(ResponseModel):
    """The coupon cannot be redeemed by this account now: why, as an error object."""

    valid: Literal[False]
    code: str
    error: CouponErrorOut


class ValidCouponOut(CouponOut):
    """The coupon, redeemable now."""

    valid: Literal[True]
    error: None


class ValidBonusCouponOut(ValidCouponOut):
    """A bonus coupon, redeemable with this purchase: the bonus it adds and the total."""

    purchase_amount: MoneyOut
    total_credit: MoneyOut


class CouponValidationOut(RootModel[InvalidCouponOut | ValidBonusCouponOut | ValidCouponOut]):
    """Whether a coupon can be redeemed: `valid` says which shape the answer has."""


class RedemptionOut(ResponseModel):
    redemption_id: str
    code: str
    kind: str
    credit_amount: MoneyOut
    purchase_amount: MoneyOut
    payment_intent_id: str | None
    balance: MoneyOut
    redeemed_at: datetime
