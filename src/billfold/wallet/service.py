"""The wallet: balance, history, usage charges and operator adjustments.

Card funding is in `wallet.funding`, withdrawals and refunds in `wallet.refunds`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billfold.errors import (
    InsufficientFunds,
)
from billfold.ledger import service as ledger
from billfold.ledger.models import LedgerTransaction, Wallet
from billfold.ledger.service import get_wallet
from billfold.money import from_micros
from billfold.wallet import auto_funding, holds
from billfold.wallet.refunds import withdrawable_micros

# Card payments whose money is purchased credit, refundable to the card on withdrawal.
__all__ = ["get_wallet"]  # the wallet row, read (ledger.lock_wallet locks it)

# Ledger transactions that move no wallet money (a subscription's card payment goes
# from clearing to revenue): kept in the ledger, left out of the wallet's history.
OFF_WALLET_KINDS = ("subscription_payment",)


def balance_view(session: Session, wallet: Wallet) -> dict[str, Any]:
    return {
        "auto_funding": auto_funding.state_view(wallet),
        "balance": from_micros(wallet.balance_micros),
        "currency": wallet.currency,
        "breakdown": {
            "subscription": from_micros(wallet.subscription_micros),
            "promotional": from_micros(wallet.promotional_micros),
            "purchased": from_micros(wallet.purchased_micros),
        },
        "withdrawable": from_micros(withdrawable_micros(session, wallet)),
        "available": from_micros(wallet.balance_micros),
        "held": from_micros(holds.held_micros(session, wallet.account_id)),
    }


def transaction_view(txn: LedgerTransaction) -> dict[str, Any]:
    return {
        "id": txn.id,
        "created_at": txn.created_at,
        "type": txn.type,
        "status": txn.status,
        "kind": txn.kind,
        "amount": from_micros(txn.amount_micros),
        "usecase": txn.usecase,
        "description": txn.description,
        "balance_after": from_micros(txn.balance_after_micros),
        "payment_intent_id": txn.payment_id,
        "metadata": txn.meta or {},
    }


def list_transactions(
    session: Session, *, account_id: str, type: str | None, limit: int, offset: int
) -> tuple[list[LedgerTransaction], int]:
    where = [
        LedgerTransaction.account_id == account_id,
        LedgerTransaction.kind.notin_(OFF_WALLET_KINDS),
    ]
    if type is not None:
        where.append(LedgerTransaction.type == type)
    items = list(
        session.scalars(
            select(LedgerTransaction)
            .where(*where)
            .order_by(LedgerTransaction.created_at.desc(), LedgerTransaction.id.desc())
            .limit(limit)
            .offset(offset)
        )
    )
    total = session.scalar(select(func.count()).select_from(LedgerTransaction).where(*where))
    return items, int(total or 0)


def charge_usage(
    session: Session,
    *,
    account_id: str,
    amount_micros: int,
    usecase: str,
    description: str | None,
    metadata: dict[str, Any] | None,
) -> LedgerTransaction:
    """Debit the wallet for usage, spending subscription, promotional, then purchased credit.

    The wallet row is locked for the split; the conditional UPDATE in ledger.post
    still guards every bucket, so a balance can never go below zero.
    """
    wallet = ledger.lock_wallet(session, account_id)
    if wallet.balance_micros < amount_micros:
        raise InsufficientFunds(
            "The wallet balance cannot cover this charge.",
            details={
                "balance": from_micros(wallet.balance_micros),
                "amount": from_micros(amount_micros),
            },
        )
    postings = [*ledger.spend_split(_buckets(wallet), amount_micros)]
    postings.append(ledger.Posting(ledger.REVENUE_USAGE, amount_micros))
    txn = ledger.post(
        session,
        account_id=account_id,
        kind="usage_charge",
        usecase=usecase,
        description=description,
        postings=postings,
        meta=metadata,
    )
    auto_funding.after_debit(
        session, locked_wallet=wallet, balance_after_micros=txn.balance_after_micros
    )
    return txn


def adjust(
    session: Session, *, account_id: str, amount_micros: int, reason: str
) -> LedgerTransaction:
    """Operator adjustment: a credit lands as promotional credit (it has no card behind it
    to be refunded to); a debit spends in the usual order."""
    wallet = ledger.lock_wallet(session, account_id)
    if amount_micros > 0:
        postings = [ledger.Posting(ledger.wallet_account("promotional"), amount_micros)]
    else:
        postings = ledger.spend_split(_buckets(wallet), -amount_micros)
    txn = ledger.post(
        session,
        account_id=account_id,
        kind="adjustment",
        usecase="adjustment",
        description=reason,
        postings=[*postings, ledger.Posting(ledger.OPERATOR_ADJUSTMENTS, -amount_micros)],
    )
    if amount_micros < 0:
        auto_funding.after_debit(
            session, locked_wallet=wallet, balance_after_micros=txn.balance_after_micros
        )
    return txn


def _buckets(wallet: Wallet) -> dict[str, int]:
    return {
        "subscription": wallet.subscription_micros,
        "promotional": wallet.promotional_micros,
        "purchased": wallet.purchased_micros,
    }
