"""Saved cards, card payments and their refunds, as recorded from the processor, and the
attempts that charge a card (see `billfold.payments.attempts`)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, text
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
    # The cardholder disputed it: its credit is no longer withdrawable (see Dispute).
    disputed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
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


class AttemptState(StrEnum):
    """pending → succeeded | failed | unknown; unknown → succeeded | failed (the janitor)."""

    PENDING = "pending"  # written before the processor call; the outcome is not recorded
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"  # the processor call raised: it may or may not have charged

    @property
    def settled(self) -> bool:
        return self in (AttemptState.SUCCEEDED, AttemptState.FAILED)


OPEN_STATES = (AttemptState.PENDING, AttemptState.UNKNOWN)


class AttemptPurpose(StrEnum):
    """What a card charge pays for: each purpose's handlers live in a higher domain."""

    WALLET_FUNDING = "wallet_funding"  # POST /wallet/fund
    CHECKOUT = "checkout"  # a payment link paid on the hosted page (fund or subscribe)
    COUPON_PURCHASE = "coupon_purchase"  # a bonus coupon's card purchase
    AUTO_FUNDING = "auto_funding"  # the low-balance top-up job
    SUBSCRIPTION_INVOICE = "subscription_invoice"  # an open subscription invoice
    CHARGE_AMOUNT = "charge_amount"  # POST /subscriptions/charge-amount


class FailureReason(StrEnum):
    DECLINED = "declined"  # the processor refused the charge (a failed payment is recorded)
    CARD_UNAVAILABLE = "card_unavailable"  # the processor does not know the card: no charge
    NOT_CHARGED = "not_charged"  # the charge never reached the processor


class PaymentAttempt(Base):
    """One card charge, written (committed) before the processor is called.

    `key` is the processor idempotency key, derived from the operation (a request's
    idempotency key, a job, an invoice attempt), so whoever runs the same operation again
    reuses it and the processor sees one charge. The state moves only through conditional
    UPDATEs (`WHERE state IN ('pending', 'unknown')`): whoever moves it records the
    outcome and runs the purpose's handler, in that one transaction.
    """

    __tablename__ = "payment_attempts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # pat_…
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    purpose: Mapped[str] = mapped_column(String(30))  # AttemptPurpose
    operation: Mapped[str] = mapped_column(String(400))
    number: Mapped[int] = mapped_column(Integer)  # 1, then 2… after a charge never made
    key: Mapped[str] = mapped_column(String(400), unique=True)
    state: Mapped[str] = mapped_column(String(12))  # AttemptState
    amount_micros: Mapped[int] = mapped_column(Micros)
    currency: Mapped[str] = mapped_column(String(3))
    payment_method_id: Mapped[str] = mapped_column(String(64))
    payment_purpose: Mapped[str] = mapped_column(String(40))  # Payment.purpose once recorded
    # What the purpose's handlers need (an invoice, a checkout session, a redemption …).
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    payment_id: Mapped[str | None] = mapped_column(String(64))  # the processor's pi_…
    failure_reason: Mapped[str | None] = mapped_column(String(30))  # FailureReason
    failure_message: Mapped[str | None] = mapped_column(String(500))
    settled_by: Mapped[str | None] = mapped_column(String(12))  # request, janitor
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now)
    settled_at: Mapped[datetime | None]
    # When a charge under the key last began, in real time (whatever the account's clock):
    # when it was written, or when a caller that joined it open marked it just before its
    # own call. The janitor settles it as never charged only once this is STALE_AFTER
    # behind, and its sweep finds open attempts by it (None: written before; created_at).
    charge_started_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_payment_attempts_account_id", "account_id"),
        Index("ix_payment_attempts_operation", "operation", "number"),
        Index("ix_payment_attempts_open", "state", "created_at"),
    )


class Dispute(Base):
    """A cardholder's dispute of a card payment, as the processor reported it."""

    __tablename__ = "disputes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the processor's dp_…
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    payment_id: Mapped[str] = mapped_column(ForeignKey("payments.id"))
    amount_micros: Mapped[int] = mapped_column(Micros)
    reason: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=now)

    __table_args__ = (Index("ix_disputes_account_id", "account_id"),)


class ProcessorEvent(Base):
    """A processor webhook event already processed (its id), so a replay does nothing."""

    __tablename__ = "processor_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # evt_…
    type: Mapped[str] = mapped_column(String(80))
    received_at: Mapped[datetime] = mapped_column(default=now)
