"""The billing overview: one read across wallet, cards, subscriptions and payments."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billfold.payments import service as payments
from billfold.payments.models import Payment, PaymentAttempt
from billfold.subscriptions import views as subscriptions
from billfold.subscriptions.models import Subscription
from billfold.subscriptions.states import SubscriptionStatus
from billfold.wallet import service as wallet_service
from billfold.webhooks.models import WebhookEndpoint

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


def attention(session: Session) -> dict[str, int]:
    """What an operator's alerts watch, counted now: payment attempts whose outcome the
    processor has not told yet (`unknown`), webhook endpoints disabled after failing,
    subscriptions in dunning (`past_due`) or given up on (`unpaid`)."""
    by_state = dict(
        session.execute(
            select(PaymentAttempt.state, func.count())
            .where(PaymentAttempt.state.in_(("pending", "unknown")))
            .group_by(PaymentAttempt.state)
        ).all()
    )
    disabled = session.scalar(
        select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.enabled.is_(False))
    )
    by_status = dict(
        session.execute(
            select(Subscription.status, func.count())
            .where(Subscription.status.in_(("past_due", "unpaid")))
            .group_by(Subscription.status)
        ).all()
    )
    return {
        "payment_attempts_pending": int(by_state.get("pending", 0)),
        "payment_attempts_unknown": int(by_state.get("unknown", 0)),
        "webhook_endpoints_disabled": int(disabled or 0),
        "subscriptions_past_due": int(by_status.get("past_due", 0)),
        "subscriptions_unpaid": int(by_status.get("unpaid", 0)),
    }
