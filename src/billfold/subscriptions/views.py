"""Reading subscriptions: finding one, listing them, what an agent sees of one, the
webhook events that carry it, and the 402 that carries it after a declined payment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.errors import ErrorCode, NotFound, PaymentFailed
from billfold.invoices.models import Invoice
from billfold.money import from_micros
from billfold.payments import service as payments
from billfold.subscriptions.attempts import Paid
from billfold.subscriptions.models import Plan, Subscription
from billfold.subscriptions.plans import plan_view
from billfold.subscriptions.states import LIVE_STATUSES, SubscriptionStatus
from billfold.webhooks import service as webhooks

if TYPE_CHECKING:
    from billfold.services import Services


def subscription_not_found(subscription_id: str) -> NotFound:
    return NotFound(
        "No such subscription.",
        code=ErrorCode.SUBSCRIPTION_NOT_FOUND,
        details={"subscription_id": subscription_id},
    )


def get_for_account(session: Session, *, account_id: str, subscription_id: str) -> Subscription:
    sub = session.get(Subscription, subscription_id)
    if sub is None or sub.account_id != account_id:
        raise subscription_not_found(subscription_id)
    return sub


def list_for_account(session: Session, account_id: str, *, live_only: bool) -> list[Subscription]:
    query = select(Subscription).where(Subscription.account_id == account_id)
    if live_only:
        query = query.where(Subscription.status.in_(LIVE_STATUSES))
    return list(session.scalars(query.order_by(Subscription.created_at.desc(), Subscription.id)))


def _payment_status(invoice: Invoice | None) -> str | None:
    if invoice is None:
        return None
    if invoice.status == "paid":
        return "paid"
    if invoice.status == "open":
        if invoice.attempt_key:
            return "processing"
        return "failed" if invoice.last_payment_error else "pending"
    return invoice.status  # void, uncollectible


def view(session: Session, sub: Subscription) -> dict[str, Any]:
    """Everything an agent asks about a subscription."""
    plan = session.get(Plan, sub.plan_id)
    assert plan is not None
    scheduled = session.get(Plan, sub.scheduled_plan_id) if sub.scheduled_plan_id else None
    invoice = session.get(Invoice, sub.latest_invoice_id) if sub.latest_invoice_id else None
    latest = None
    if invoice is not None:
        latest = {
            "id": invoice.id,
            "number": invoice.number,
            "status": invoice.status,
            "billing_reason": invoice.billing_reason,
            "total": from_micros(invoice.total_micros),
            "amount_paid": from_micros(invoice.amount_paid_micros),
            "attempt_count": invoice.attempt_count,
            "next_payment_attempt": invoice.next_payment_attempt,
            "last_payment_error": invoice.last_payment_error,
            "payment_intent_id": invoice.payment_intent_id,
        }
    incomplete = sub.status == SubscriptionStatus.INCOMPLETE
    return {
        "id": sub.id,
        "object": "subscription",
        "status": str(sub.status),
        "kind": str(sub.kind),
        "plan_id": sub.plan_id,
        "plan": plan_view(plan),
        "current_period_start": sub.current_period_start,
        "current_period_end": sub.current_period_end,
        "cancel_at_period_end": sub.cancel_at_period_end,
        "canceled_at": sub.canceled_at,
        "ended_at": sub.ended_at,
        "paused_at": sub.paused_at,
        "trial_end": sub.trial_end,
        "scheduled_change": (
            {
                "plan_id": scheduled.id,
                "plan_name": scheduled.name,
                "effective_at": sub.current_period_end,
            }
            if scheduled is not None
            else None
        ),
        "latest_invoice": latest,
        "payment_status": _payment_status(invoice),
        "next_retry_at": invoice.next_payment_attempt if invoice is not None else None,
        "incomplete_expires_at": sub.incomplete_expires_at if incomplete else None,
        "created_at": sub.created_at,
    }


def emit(session: Session, type: str, sub: Subscription, **extra: Any) -> None:
    """A `subscription.<type>` webhook event carrying the subscription as it is now."""

    def data() -> dict[str, Any]:
        session.flush()
        return {**view(session, sub), **extra}

    webhooks.emit(session, type=f"subscription.{type}", account_id=sub.account_id, data=data)


def answer(
    services: Services, paid: Paid, *, account_id: str, subscription_id: str
) -> dict[str, Any]:
    """The subscription after a payment attempt, or the 402 that carries it."""
    with services.database.read() as session:
        sub = get_for_account(session, account_id=account_id, subscription_id=subscription_id)
        data = view(session, sub)
    if not paid.succeeded:
        raise _declined(data, paid)
    return data


def _declined(data: dict[str, Any], paid: Paid) -> PaymentFailed:
    error = paid.error or {}
    return PaymentFailed(
        str(error.get("message") or "The card was declined."),
        decline_code=str(error.get("decline_code") or "generic_decline"),
        payment={
            **data,
            "payment": payments.payment_view(paid.payment) if paid.payment else None,
        },
    )
