"""Request and response shapes of the wallet."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field

from billfold.money import (
    CARD_DECIMALS,
    MAX_AMOUNT,
    MIN_AUTO_CHARGE,
    MIN_CHARGE_THRESHOLD,
    MIN_FUNDING,
    ONE_CENT,
    ONE_MICRO,
    USAGE_DECIMALS,
    AmountRules,
    MoneyOut,
)
from billfold.payments.schemas import PaymentMethodId
from billfold.schemas import RequestModel, ResponseModel
from billfold.text import CleanText

FundingAmount = Annotated[Decimal, AmountRules(decimals=CARD_DECIMALS, minimum=MIN_FUNDING)]
WithdrawalAmount = Annotated[Decimal, AmountRules(decimals=CARD_DECIMALS, minimum=ONE_CENT)]
AutoChargeAmount = Annotated[Decimal, AmountRules(decimals=CARD_DECIMALS, minimum=MIN_AUTO_CHARGE)]
ThresholdAmount = Annotated[
    Decimal, AmountRules(decimals=CARD_DECIMALS, minimum=MIN_CHARGE_THRESHOLD)
]
AdjustmentAmount = Annotated[
    Decimal,
    AmountRules(decimals=USAGE_DECIMALS, minimum=-MAX_AMOUNT, nonzero=True),
]
UsageAmount = Annotated[Decimal, AmountRules(decimals=USAGE_DECIMALS, minimum=ONE_MICRO)]
TransactionType = Literal["credit", "debit"]


class FundRequest(RequestModel):
    amount: FundingAmount
    payment_method_id: PaymentMethodId | None = None


class AutoFundingRequest(RequestModel):
    """Also accepts the short names `amount` and `threshold`."""

    auto_charge_amount: AutoChargeAmount = Field(
        validation_alias=AliasChoices("auto_charge_amount", "amount")
    )
    charge_threshold: ThresholdAmount = Field(
        validation_alias=AliasChoices("charge_threshold", "threshold")
    )


class AutoFundingOut(ResponseModel):
    enabled: bool
    auto_charge_amount: MoneyOut | None
    charge_threshold: MoneyOut | None
    consecutive_failures: int
    disabled_reason: str | None


class WithdrawRequest(RequestModel):
    amount: WithdrawalAmount


class UsageChargeRequest(RequestModel):
    account_id: str = Field(min_length=1, max_length=40)
    amount: UsageAmount
    usecase: CleanText = Field(min_length=1, max_length=200)
    description: CleanText | None = Field(default=None, max_length=500)
    metadata: dict[str, Any] | None = None


MAX_HOLD_TTL_SECONDS = 86_400
DEFAULT_HOLD_TTL_SECONDS = 3_600


class UsageHoldRequest(RequestModel):
    account_id: str = Field(min_length=1, max_length=40)
    amount: UsageAmount
    usecase: CleanText = Field(min_length=1, max_length=200)
    description: CleanText | None = Field(default=None, max_length=500)
    metadata: dict[str, Any] | None = None
    ttl_seconds: int = Field(default=DEFAULT_HOLD_TTL_SECONDS, ge=1, le=MAX_HOLD_TTL_SECONDS)


class UsageHoldCaptureRequest(RequestModel):
    """No amount: capture the whole hold. `account_id`, if given, must own the hold."""

    amount: UsageAmount | None = None
    account_id: str | None = Field(default=None, min_length=1, max_length=40)


class UsageHoldReleaseRequest(RequestModel):
    """`account_id`, if given, must own the hold."""

    account_id: str | None = Field(default=None, min_length=1, max_length=40)


class OperatorRefundRequest(RequestModel):
    payment_intent_id: str = Field(min_length=1, max_length=64)
    amount: WithdrawalAmount | None = None
    reason: CleanText = Field(min_length=1, max_length=500)


class AdjustmentRequest(RequestModel):
    account_id: str = Field(min_length=1, max_length=40)
    amount: AdjustmentAmount
    reason: CleanText = Field(min_length=1, max_length=500)


class Breakdown(ResponseModel):
    subscription: MoneyOut
    promotional: MoneyOut
    purchased: MoneyOut


class BalanceOut(ResponseModel):
    auto_funding: AutoFundingOut
    balance: MoneyOut
    currency: str
    breakdown: Breakdown
    withdrawable: MoneyOut
    # What usage can spend now (the balance), and what active usage holds keep out of it.
    available: MoneyOut
    held: MoneyOut


class TransactionOut(ResponseModel):
    id: str
    created_at: datetime
    type: TransactionType
    status: str
    kind: str
    amount: MoneyOut
    usecase: str
    description: str | None
    balance_after: MoneyOut
    payment_intent_id: str | None
    metadata: dict[str, Any]


class WalletSummary(ResponseModel):
    balance: MoneyOut
    currency: str


class TransactionPage(ResponseModel):
    items: list[TransactionOut]
    wallet: WalletSummary
    total: int
    limit: int
    offset: int
    has_more: bool


class FundOut(ResponseModel):
    payment_intent_id: str
    status: str
    amount: MoneyOut
    currency: str
    payment_method_id: str | None
    transaction_id: str | None
    balance: MoneyOut


class RefundOut(ResponseModel):
    id: str
    payment_intent_id: str
    amount: MoneyOut
    status: str


class WithdrawOut(ResponseModel):
    withdrawal_id: str
    amount: MoneyOut
    balance: MoneyOut
    currency: str
    refunds: list[RefundOut]


class UsageChargeOut(ResponseModel):
    id: str
    account_id: str
    amount: MoneyOut
    usecase: str
    balance_after: MoneyOut
    created_at: datetime


HoldStatusOut = Literal["held", "captured", "released", "expired"]


class UsageHoldOut(ResponseModel):
    id: str
    hold_id: str
    account_id: str
    amount: MoneyOut
    captured_amount: MoneyOut
    usecase: str
    description: str | None
    metadata: dict[str, Any]
    status: HoldStatusOut
    # What the hold took from each kind of credit (and gives back what it does not use).
    breakdown: Breakdown
    expires_at: datetime
    created_at: datetime
    resolved_at: datetime | None
    hold_transaction_id: str
    release_transaction_id: str | None
    charge_transaction_id: str | None
    # The wallet balance right after this call's change (None on a read).
    balance_after: MoneyOut | None


class LedgerCheckOut(ResponseModel):
    account_id: str
    cached: dict[str, MoneyOut]
    postings: dict[str, MoneyOut]
    consistent: bool


class LedgerProblemOut(ResponseModel):
    account_id: str | None = None
    transaction_id: str | None = None
    problem: str


class LedgerAuditOut(ResponseModel):
    accounts: int
    transactions_unbalanced: int
    consistent: bool
    problems: list[LedgerProblemOut]


class OperatorRefundOut(ResponseModel):
    id: str
    amount: MoneyOut
    reason: str
    balance: MoneyOut
    refunds: list[RefundOut]
