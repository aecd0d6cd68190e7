"""Double-entry ledger: immutable transactions whose postings sum to zero, and the wallet
row that caches each account's balances (one column per kind of credit)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from billfold.clock import now
from billfold.db import Base, Micros, partial_index


class LedgerTransaction(Base):
    __tablename__ = "ledger_transactions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    # What happened: wallet_funding, usage_charge, withdrawal, withdrawal_reversal, …
    kind: Mapped[str] = mapped_column(String(40))
    # From the wallet's side: "credit" raises the balance, "debit" lowers it.
    type: Mapped[str] = mapped_column(String(6))
    amount_micros: Mapped[int] = mapped_column(Micros)
    # "succeeded" for every posted transaction; "failed" marks a recorded attempt that
    # moved no money (a declined top-up) and so has no postings.
    status: Mapped[str] = mapped_column(String(12), default="succeeded")
    balance_after_micros: Mapped[int] = mapped_column(Micros)
    usecase: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(500))
    payment_id: Mapped[str | None] = mapped_column(String(64))
    # Unique per account when set: the business key that makes a posting happen once.
    # (Most transactions, the usage charges, have none: the unique index holds only the
    # set ones, so a usage charge writes no entry in it.)
    reference: Mapped[str | None] = mapped_column(String(300))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    created_at: Mapped[datetime] = mapped_column(default=now)

    __table_args__ = (
        partial_index(
            "uq_ledger_transactions_account_id_reference",
            "account_id",
            "reference",
            unique=True,
            where="reference IS NOT NULL",
        ),
        Index("ix_ledger_transactions_account_created", "account_id", "created_at", "id"),
    )


class LedgerPosting(Base):
    """One line of a transaction: at most one per ledger account (`ledger.post` checks),
    so the transaction and the ledger account are its key. The key's index is also the
    one a transaction's postings are read through: a posting writes two index entries
    (this and the account's), not three as with a surrogate id."""

    __tablename__ = "ledger_postings"

    transaction_id: Mapped[str] = mapped_column(
        ForeignKey("ledger_transactions.id"), primary_key=True
    )
    account_id: Mapped[str] = mapped_column(String(40))
    # wallet:subscription, wallet:promotional, wallet:purchased (cached on the wallet row),
    # processor:clearing, revenue:usage, operator:adjustments (not cached: sums on demand).
    ledger_account: Mapped[str] = mapped_column(String(40), primary_key=True)
    amount_micros: Mapped[int] = mapped_column(Micros)

    __table_args__ = (Index("ix_ledger_postings_account_ledger", "account_id", "ledger_account"),)


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
