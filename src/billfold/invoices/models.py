"""Invoices and credit notes, their lines, the numbering series and the seller's settings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from billfold.clock import now
from billfold.db import Base, Micros


class Invoice(Base):
    __tablename__ = "invoices"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # in_… / cn_…
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[str] = mapped_column(String(12))  # invoice, credit_note
    number: Mapped[str | None] = mapped_column(String(40), unique=True)
    # Stripe's vocabulary: draft, open, paid, void, uncollectible.
    status: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    subtotal_micros: Mapped[int] = mapped_column(Micros)
    discount_micros: Mapped[int] = mapped_column(Micros, default=0)
    tax_micros: Mapped[int] = mapped_column(Micros, default=0)
    total_micros: Mapped[int] = mapped_column(Micros)
    amount_paid_micros: Mapped[int] = mapped_column(Micros, default=0)
    tax_rate_basis_points: Mapped[int] = mapped_column(Integer, default=0)
    reverse_charge: Mapped[bool] = mapped_column(Boolean, default=False)
    payment_intent_id: Mapped[str | None] = mapped_column(String(64))
    refund_id: Mapped[str | None] = mapped_column(String(64))
    reverses_invoice_id: Mapped[str | None] = mapped_column(String(40))
    # What it documents, once: "payment:<pi>" for an invoice, "refund:<re>" for a credit note.
    source: Mapped[str] = mapped_column(String(80), unique=True)
    seller: Mapped[dict[str, Any]] = mapped_column(JSON)
    buyer: Mapped[dict[str, Any]] = mapped_column(JSON)  # snapshot at finalization
    issued_at: Mapped[datetime | None]
    paid_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=now)
    # Subscription invoices (Stripe's billing_reason: subscription_create,
    # subscription_cycle, subscription_update, subscription_reset).
    subscription_id: Mapped[str | None] = mapped_column(String(40))
    billing_reason: Mapped[str | None] = mapped_column(String(30))
    # Payment attempts on an open invoice; `attempt_key` is the processor idempotency key
    # of the attempt in flight (reused until its outcome is recorded, so never two charges).
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    attempt_key: Mapped[str | None] = mapped_column(String(80))
    attempt_payment_method_id: Mapped[str | None] = mapped_column(String(64))
    next_payment_attempt: Mapped[datetime | None]
    last_payment_error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_invoices_account_created", "account_id", "created_at"),
        Index("ix_invoices_subscription_id", "subscription_id"),
    )


class InvoiceLine(Base):
    __tablename__ = "invoice_lines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoices.id"), index=True)
    account_id: Mapped[str] = mapped_column(String(40))
    position: Mapped[int] = mapped_column(Integer)
    # wallet_funding, subscription, proration, one_off, refund
    kind: Mapped[str] = mapped_column(String(20))
    description: Mapped[str] = mapped_column(String(300))
    quantity: Mapped[int] = mapped_column(Integer, default=1)
    unit_amount_micros: Mapped[int] = mapped_column(Micros)
    amount_micros: Mapped[int] = mapped_column(Micros)
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]


class NumberSeries(Base):
    """The last number issued in a series; locked by the finalizing transaction."""

    __tablename__ = "invoice_number_series"

    series: Mapped[str] = mapped_column(String(20), primary_key=True)
    last_number: Mapped[int] = mapped_column(Integer, default=0)


class OperatorSettings(Base):
    """The operator's invoicing settings (one row): seller, number prefixes, tax rates."""

    __tablename__ = "operator_settings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=now)
