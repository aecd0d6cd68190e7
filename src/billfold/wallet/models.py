"""Usage holds: wallet money reserved for usage not yet metered, captured or released later."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ColumnElement, ForeignKey, String, literal_column, text
from sqlalchemy.orm import Mapped, mapped_column

from billfold.clock import now
from billfold.db import Base, Micros, partial_index


class HoldStatus(StrEnum):
    HELD = "held"  # the money sits in holds:usage
    CAPTURED = "captured"  # part (or all) became a usage charge, the rest went back
    RELEASED = "released"  # all of it went back, on request
    EXPIRED = "expired"  # all of it went back when the hold's time ran out


# `status = 'held'` with the status in the SQL, not bound: the predicate of the holds'
# partial indexes, which a prepared statement's generic plan can match only to a literal.
HELD_SQL: ColumnElement[str] = literal_column("'held'")


class UsageHold(Base):
    """One hold. Its money left the wallet's buckets (split recorded per bucket) for the
    `holds:usage` ledger account when it was created; the status changes once, from `held`,
    by a conditional UPDATE, so exactly one capture, release or expiry wins."""

    __tablename__ = "usage_holds"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # hold_…
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    amount_micros: Mapped[int] = mapped_column(Micros)
    captured_micros: Mapped[int] = mapped_column(Micros, default=0)
    # What the hold took from each bucket (spending order); a release returns exactly these.
    subscription_micros: Mapped[int] = mapped_column(Micros, default=0)
    promotional_micros: Mapped[int] = mapped_column(Micros, default=0)
    purchased_micros: Mapped[int] = mapped_column(Micros, default=0)
    # Of `subscription_micros`, the included credit whose grant expired while held: what
    # a release gives back of it (what a capture did not spend) expires then.
    subscription_expired_micros: Mapped[int] = mapped_column(
        Micros, default=0, server_default=text("0")
    )
    usecase: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(500))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    status: Mapped[str] = mapped_column(String(12), default=HoldStatus.HELD)
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=now)
    resolved_at: Mapped[datetime | None]
    hold_transaction_id: Mapped[str] = mapped_column(String(40))
    release_transaction_id: Mapped[str | None] = mapped_column(String(40))
    charge_transaction_id: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (
        # Every read of holds by account or expiry is of the held ones (the balance's
        # `held`, the sweep, a grant's expiry): the indexes hold only those, so a hold's
        # capture, release or expiry writes no entry in them, and they stay as small as
        # the holds in flight (vacuum takes the old entries out).
        partial_index("ix_usage_holds_held_account", "account_id", where="status = 'held'"),
        partial_index("ix_usage_holds_held_expires_at", "expires_at", where="status = 'held'"),
    )
