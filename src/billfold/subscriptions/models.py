"""Plans, subscriptions and the included credits they grant."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from billfold.clock import now
from billfold.db import Base, Micros
from billfold.subscriptions.states import LIVE_STATUSES, GrantStatus, PlanKind, PlanStatus

__all__ = ["LIVE_STATUSES", "CreditGrant", "Plan", "Subscription"]

# "status IN ('incomplete', 'trialing', 'active', 'past_due', 'paused', 'unpaid')"
_LIVE_SQL = "status IN ({})".format(", ".join(f"'{status}'" for status in LIVE_STATUSES))


class Plan(Base):
    __tablename__ = "plans"

    # Integer ids, as clients know them (`plan_id=42`).
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(120))
    price_micros: Mapped[int] = mapped_column(Micros)
    currency: Mapped[str] = mapped_column(String(3))
    period: Mapped[str] = mapped_column(String(8))  # month, year
    features: Mapped[list[str]] = mapped_column(JSON, default=list)
    kind: Mapped[str] = mapped_column(String(12))  # a PlanKind
    included_credits_micros: Mapped[int | None] = mapped_column(Micros)
    trial_days: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(12), default=PlanStatus.ACTIVE)
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now)


class Subscription(Base):
    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # sub_…
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"))
    kind: Mapped[str] = mapped_column(String(12))  # its plan's PlanKind
    # A SubscriptionStatus (Stripe's vocabulary), changed only by `states.transition`.
    status: Mapped[str] = mapped_column(String(20))
    # Period n runs from anchor + n periods to anchor + n+1 periods (month arithmetic
    # clamps to the month's last day, so a Jan 31 anchor renews Feb 28, then Mar 31).
    cycle_anchor: Mapped[datetime]
    cycle_number: Mapped[int] = mapped_column(Integer, default=0)
    current_period_start: Mapped[datetime]
    current_period_end: Mapped[datetime]
    trial_end: Mapped[datetime | None]
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    canceled_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    paused_at: Mapped[datetime | None]
    scheduled_plan_id: Mapped[int | None] = mapped_column(Integer)
    latest_invoice_id: Mapped[str | None] = mapped_column(String(40))
    # The invoice awaiting payment (first period, a renewal in dunning, an upgrade):
    # at most one at a time, so two payments for the same thing cannot start.
    open_invoice_id: Mapped[str | None] = mapped_column(String(40))
    incomplete_expires_at: Mapped[datetime | None]
    created_by: Mapped[str] = mapped_column(String(12))  # agent, checkout, operator
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now)

    __table_args__ = (
        Index("ix_subscriptions_account_id", "account_id"),
        Index(
            "uq_subscriptions_one_live_normal",
            "account_id",
            unique=True,
            sqlite_where=text(f"kind = '{PlanKind.NORMAL}' AND {_LIVE_SQL}"),
            postgresql_where=text(f"kind = '{PlanKind.NORMAL}' AND {_LIVE_SQL}"),
        ),
        Index(
            "uq_subscriptions_live_plan",
            "account_id",
            "plan_id",
            unique=True,
            sqlite_where=text(_LIVE_SQL),
            postgresql_where=text(_LIVE_SQL),
        ),
    )


class CreditGrant(Base):
    """Included credits of one period: subscription credit that expires at period end."""

    __tablename__ = "credit_grants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # cg_…
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    subscription_id: Mapped[str] = mapped_column(String(40))
    amount_micros: Mapped[int] = mapped_column(Micros)
    expired_micros: Mapped[int] = mapped_column(Micros, default=0)
    status: Mapped[str] = mapped_column(String(12), default=GrantStatus.ACTIVE)
    granted_at: Mapped[datetime] = mapped_column(default=now)
    expires_at: Mapped[datetime]
    expired_at: Mapped[datetime | None]
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_credit_grants_account_status", "account_id", "status"),)
