"""Saved cards, card payments and their refunds, as recorded from the processor."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from billfold.clock import now
from billfold.db import Base, Micros


class PaymentMethod(Base):
    """A card saved on an account. Only brand, last4, expiry and fingerprint are kept."""

    __tablename__ = "payment_methods"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the processor's pm_…
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    brand: Mapped[str] = mapped_column(String(20))
    last4: Mapped[str] = mapped_column(String(4))
    exp_month: Mapped[int] = mapped_column(Integer)
    exp_year: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=now)

    __table_args__ = (
        Index("ix_payment_methods_account_id", "account_id"),
        # At most one default card per account, enforced by the database.
        Index(
            "uq_payment_methods_one_default",
            "account_id",
            unique=True,
            sqlite_where=text("is_default"),
            postgresql_where=text("is_default"),
        ),
    )


class Payment(Base):
    """One attempt to move card money, keyed by the processor's PaymentIntent id."""

    __tablename__ = "payments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # pi_…
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    purpose: Mapped[str] = mapped_column(String(40))  # wallet_funding, …
    amount_micros: Mapped[int] = mapped_column(Micros)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(24))  # succeeded, failed, requires_action
    payment_method_id: Mapped[str | None] = mapped_column(String(64))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    decline_code: Mapped[str | None] = mapped_column(String(64))
    failure_message: Mapped[str | None] = mapped_column(String(500))
    refunded_micros: Mapped[int] = mapped_column(Micros, default=0)
    created_at: Mapped[datetime] = mapped_column(default=now)

    __table_args__ = (
        Index("ix_payments_account_created", "account_id", "created_at"),
        CheckConstraint("refunded_micros >= 0", name="refunded_not_negative"),
        CheckConstraint("refunded_micros <= amount_micros", name="refund_within_amount"),
    )


class Refund(Base):
    __tablename__ = "refunds"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # re_… (ours; sent as key)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    payment_id: Mapped[str] = mapped_column(ForeignKey("payments.id"))
    amount_micros: Mapped[int] = mapped_column(Micros)
    status: Mapped[str] = mapped_column(String(16))  # pending, succeeded, failed
    reason: Mapped[str] = mapped_column(String(40))  # withdrawal, operator_refund
    processor_refund_id: Mapped[str | None] = mapped_column(String(64))
    withdrawal_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=now)

    __table_args__ = (Index("ix_refunds_account_id", "account_id"),)
