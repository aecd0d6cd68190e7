"""Request and response shapes of payment links and checkout confirmation."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from billfold.money import CARD_DECIMALS, MIN_FUNDING, AmountRules, MoneyOut
from billfold.schemas import PlanId, RequestModel, ResponseModel

LinkAmount = Annotated[Decimal, AmountRules(decimals=CARD_DECIMALS, minimum=MIN_FUNDING)]


class PaymentLinkRequest(RequestModel):
    purpose: Literal["fund", "subscribe"]
    amount: LinkAmount | None = None
    plan_id: PlanId | None = None
    # Named only to refuse it with a clear message (the reference says it is not accepted).
    success_url: Any = Field(default=None, json_schema_extra={"deprecated": True})

    @field_validator("success_url")
    @classmethod
    def _no_success_url(cls, value: Any) -> None:
        if value is not None:
            raise ValueError(
                "success_url is not accepted: after paying, the human sees Billfold's success "
                "page with the session_id to copy back to the agent."
            )
        return None

    @model_validator(mode="after")
    def _purpose_fields(self) -> PaymentLinkRequest:
        if self.purpose == "fund" and self.amount is None:
            raise ValueError("amount is required when purpose is 'fund' (at least 10)")
        if self.purpose == "fund" and self.plan_id is not None:
            raise ValueError("plan_id goes with purpose 'subscribe', not 'fund'")
        if self.purpose == "subscribe" and self.plan_id is None:
            raise ValueError("plan_id is required when purpose is 'subscribe'")
        return self


class FundLinkOut(ResponseModel):
    """A `fund` payment link: an amount for the wallet, paid by a human."""

    payment_url: str
    session_id: str
    purpose: Literal["fund"]
    amount: MoneyOut
    currency: str
    expires_at: datetime
    instructions: str


class PaymentLinkOut(BaseModel):
    """Either link's fields (`fund`: FundLinkOut; `subscribe`: the subscriptions' link)."""

    payment_url: str
    session_id: str
    purpose: str
    amount: MoneyOut | None
    currency: str
    expires_at: datetime
    instructions: str
    plan_id: int | None = None
    checkout_url: str | None = None


class ConfirmCheckoutRequest(RequestModel):
    session_id: str = Field(min_length=1, max_length=64)


class ConfirmedCheckoutOut(ResponseModel):
    session_id: str
    status: str
    purpose: str
    amount: MoneyOut
    currency: str
    payment_intent_id: str | None
    balance: MoneyOut
    completed_at: datetime | None
