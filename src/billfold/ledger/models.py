"""Double-entry ledger: immutable transactions whose postings sum to zero."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from billfold.clock import now
from billfold.db import Base, Micros


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
    reference: Mapped[str | None] = mapped_column(String(300))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    created_at: Mapped[datetime] = mapped_column(default=now)

    __table_args__ = (
        UniqueConstraint("account_id", "reference"),
        Index("ix_ledger_transactions_account_created", "account_id", "created_at", "id"),
    )


class LedgerPosting(Base):
    __tablename__ = "ledger_postings"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    transaction_id: Mapped[str] = mapped_column(ForeignKey("ledger_transactions.id"))
    account_id: Mapped[str] = mapped_column(String(40))
    # wallet:subscription, wallet:promotional, wallet:purchased (cached on the wallet row),
    # processor:clearing, revenue:usage, operator:adjustments (not cached: sums on demand).
    ledger_account: Mapped[str] = mapped_column(String(40))
    amount_micros: Mapped[int] = mapped_column(Micros)

    __table_args__ = (
        Index("ix_ledger_postings_account_ledger", "account_id", "ledger_account"),
        Index("ix_ledger_postings_transaction_id", "transaction_id"),
    )
