"""Checkout sessions: a payment link a human opens to pay for the account."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from billfold.clock import now
from billfold.db import Base, Micros


class CheckoutSession(Base):
    __tablename__ = "checkout_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # cs_…
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    purpose: Mapped[str] = mapped_column(String(16))  # fund, subscribe
    amount_micros: Mapped[int] = mapped_column(Micros)
    currency: Mapped[str] = mapped_column(String(3))
    plan_id: Mapped[int | None] = mapped_column(Integer)
    # A `subscribe` session: the subscription its payment started, and where the
    # success page sends the human on (POST /subscriptions accepts success_url).
    subscription_id: Mapped[str | None] = mapped_column(String(40))
    success_url: Mapped[str | None] = mapped_column(String(2000))
    # open → processing (a payment is being attempted) → complete; open → expired.
    status: Mapped[str] = mapped_column(String(12), default="open")
    processing_until: Mapped[datetime | None]
    payment_intent_id: Mapped[str | None] = mapped_column(String(64))
    # A processor that hosts the payment page (Stripe Checkout): its session, made when
    # the human first opens the link, and where to send them.
    processor_checkout_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    processor_checkout_url: Mapped[str | None] = mapped_column(String(2000))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=now)
    completed_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_checkout_sessions_account_id", "account_id"),)
