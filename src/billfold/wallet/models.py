"""The wallet row: cached balances of the account's three kinds of credit."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from billfold.clock import now
from billfold.db import Base, Micros

# Spending order (SPEC §5): subscription credit, then promotional, then purchased.
BUCKETS = ("subscription", "promotional", "purchased")


class Wallet(Base):
    """Cached balances; each equals the sum of the ledger postings on its ledger account.

    Only `ledger.service.post` changes these columns, with atomic conditional updates.
    """

    __tablename__ = "wallets"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3))
    balance_micros: Mapped[int] = mapped_column(Micros, default=0)
    subscription_micros: Mapped[int] = mapped_column(Micros, default=0)
    promotional_micros: Mapped[int] = mapped_column(Micros, default=0)
    purchased_micros: Mapped[int] = mapped_column(Micros, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=now)

    # Auto-funding rule: when a debit leaves the balance under the threshold, charge the
    # default card. "armed" allows one top-up per crossing: a debit disarms it when it
    # enqueues a top-up, and a credit that lifts the balance back to the threshold (or a
    # declined top-up) re-arms it.
    auto_funding_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_charge_amount_micros: Mapped[int | None] = mapped_column(BigInteger)
    charge_threshold_micros: Mapped[int | None] = mapped_column(BigInteger)
    auto_funding_armed: Mapped[bool] = mapped_column(Boolean, default=True)
    auto_funding_failures: Mapped[int] = mapped_column(Integer, default=0)
    auto_funding_disabled_reason: Mapped[str | None] = mapped_column(String(300))

    __table_args__ = (
        CheckConstraint("balance_micros >= 0", name="balance_not_negative"),
        CheckConstraint("subscription_micros >= 0", name="subscription_not_negative"),
        CheckConstraint("promotional_micros >= 0", name="promotional_not_negative"),
        CheckConstraint("purchased_micros >= 0", name="purchased_not_negative"),
    )
