"""The billing overview: one read across wallet, cards, subscriptions and payments."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.payments import service as payments
from billfold.payments.models import Payment
from billfold.subscriptions import views as subscriptions
from billfold.subscriptions.states import SubscriptionStatus
from billfold.wallet import service as wallet_service

RECENT = 10


def payment_summary(payment: Payment) -> dict[str, Any]:
    view = payments.payment_view(payment)
    return {
        key: view[key]
        for key in (
            "payment_intent_id",
            "status",
            "purpose",
            "amount",
            "currency",
            "created_at",
            "decline_code",
        )
    }


def overview(session: Session, account_id: str) -> dict[str, Any]:
    wallet = wallet_service.get_wallet(session, account_id)
    balance = wallet_service.balance_view(session, wallet)
    default = payments.default_payment_method(session, account_id)
    recent = session.scalars(
        select(Payment)
        .where(Payment.account_id == account_id)
        .order_by(Payment.created_at.desc(), Payment.id.desc())
        .limit(RECENT)
    )
    transactions, _ = wallet_service.list_transactions(
        session, account_id=account_id, type=None, limit=RECENT, offset=0
    )
    return {
        "wallet_balance": balance["balance"],
        "currency": balance["currency"],
        "balance_breakdown": balance["breakdown"],
        "auto_funding": balance["auto_funding"],
        "default_payment_method": payments.payment_method_view(default) if default else None,
        "active_subscriptions": [
            subscriptions.view(session, sub)
            for sub in subscriptions.list_for_account(session, account_id, live_only=True)
            if sub.status != SubscriptionStatus.INCOMPLETE
        ],
        "recent_charges": [payment_summary(p) for p in recent],
        "recent_transactions": [wallet_service.transaction_view(t) for t in transactions],
    }
