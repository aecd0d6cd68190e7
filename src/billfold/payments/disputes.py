"""Disputes of card payments, as the processor reports them (Stripe's `charge.dispute.*`).

A disputed payment's credit stops being withdrawable (the withdrawal plan skips it): the
cardholder's bank may take the money back, and refunding it as well would pay it twice.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from billfold.clock import now
from billfold.db import insert_or_ignore
from billfold.money import from_micros
from billfold.payments.models import Dispute, Payment
from billfold.webhooks import service as webhooks


def record_dispute(
    session: Session,
    *,
    dispute_id: str,
    payment_intent_id: str,
    amount_micros: int,
    reason: str,
    status: str,
) -> Dispute | None:
    """Record a dispute once (None: not a payment of Billfold's); the payment is marked
    disputed and a `payment.disputed` event goes out."""
    payment = session.get(Payment, payment_intent_id)
    if payment is None:
        return None
    inserted = insert_or_ignore(
        session,
        Dispute,
        {
            "id": dispute_id,
            "account_id": payment.account_id,
            "payment_id": payment.id,
            "amount_micros": amount_micros,
            "reason": reason[:64],
            "status": status[:32],
            "created_at": now(),
        },
        ["id"],
    )
    dispute = session.get(Dispute, dispute_id, populate_existing=True)
    if inserted:
        session.execute(update(Payment).where(Payment.id == payment.id).values(disputed=True))
        webhooks.emit(
            session,
            type="payment.disputed",
            account_id=payment.account_id,
            data={
                "dispute_id": dispute_id,
                "payment_intent_id": payment.id,
                "amount": from_micros(amount_micros),
                "currency": payment.currency,
                "reason": reason,
                "status": status,
            },
        )
    return dispute
