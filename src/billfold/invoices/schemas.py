"""Request and response shapes of invoices, credit notes and the operator's invoice settings."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import Field

from billfold.billing.schemas import Country
from billfold.money import MAX_PERCENT, PERCENT_DECIMALS, AmountRules, MoneyOut
from billfold.schemas import RequestModel, ResponseModel
from billfold.text import CleanText

TaxRate = Annotated[
    Decimal, AmountRules(decimals=PERCENT_DECIMALS, minimum=Decimal(0), maximum=MAX_PERCENT)
]


class SellerIn(RequestModel):
    name: CleanText | None = Field(default=None, max_length=200)
    address: list[Annotated[CleanText, Field(max_length=200)]] | None = Field(
        default=None, max_length=6
    )
    country: Country | None = None
    tax_id: CleanText | None = Field(default=None, max_length=64)
    email: CleanText | None = Field(default=None, max_length=320)


class InvoiceSettingsIn(RequestModel):
    seller: SellerIn | None = None
    invoice_prefix: str | None = Field(default=None, pattern=r"^[A-Z0-9]{1,10}$")
    credit_note_prefix: str | None = Field(default=None, pattern=r"^[A-Z0-9]{1,10}$")
    tax_rates: dict[str, TaxRate] | None = None


class SellerOut(ResponseModel):
    name: str | None
    address: list[str] | None
    country: str | None
    tax_id: str | None
    email: str | None
    logo_path: str | None


class InvoiceSettingsOut(ResponseModel):
    seller: SellerOut
    invoice_prefix: str
    credit_note_prefix: str
    tax_rates: dict[str, str]


class InvoiceSummaryOut(ResponseModel):
    id: str
    object: str = Field(description="invoice or credit_note")
    number: str | None
    status: str
    currency: str
    subtotal: MoneyOut
    discount: MoneyOut
    tax: MoneyOut
    total: MoneyOut
    amount_paid: MoneyOut
    payment_intent_id: str | None
    reverses_invoice_id: str | None
    issued_at: datetime | None
    paid_at: datetime | None
    subscription_id: str | None
    billing_reason: str | None
    attempt_count: int
    next_payment_attempt: datetime | None


class InvoiceLineOut(ResponseModel):
    description: str
    kind: str
    quantity: int
    unit_amount: MoneyOut
    amount: MoneyOut
    period_start: datetime | None
    period_end: datetime | None


class InvoiceOut(InvoiceSummaryOut):
    tax_rate: MoneyOut = Field(description="Percent")
    reverse_charge: bool
    reverse_charge_note: str | None
    seller: dict[str, Any] = Field(description="The seller's details when it was issued")
    buyer: dict[str, Any] = Field(description="The buyer's billing info when it was issued")
    lines: list[InvoiceLineOut]


class InvoicePage(ResponseModel):
    items: list[InvoiceSummaryOut]
    total: int
    limit: int
    offset: int
    has_more: bool


class InvoicePdfLinkOut(ResponseModel):
    url: str
    expires_at: datetime
    number: str | None
