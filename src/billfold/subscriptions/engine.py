"""What every subscription use case shares: its row locks, a period's invoice, the period's
included credits and renewal job, giving up an open invoice, and ending.

Lock order, whatever the use case: the subscription, then its invoice, then a number
series, then the wallet, then its credit grants.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from billfold.clock import now
from billfold.errors import Conflict, ErrorCode
from billfold.invoices import service as invoices
from billfold.invoices.models import Invoice
from billfold.jobs import service as jobs
from billfold.ledger.models import Wallet
from billfold.money import from_micros
from billfold.subscriptions import attempts, credits, states
from billfold.subscriptions.models import Plan, Subscription
from billfold.subscriptions.states import BillingReason, Event
from billfold.subscriptions.views import emit, subscription_not_found

RENEW_JOB = "subscriptions.renew"

lock_invoice = attempts.lock_invoice


def lock(session: Session, subscription_id: str, account_id: str | None = None) -> Subscription:
    """The subscription, locked (and the account's, when `account_id` is given)."""
    sub = attempts.lock_subscription(session, subscription_id)
    if sub is None or (account_id is not None and sub.account_id != account_id):
        raise subscription_not_found(subscription_id)
    return sub


def payment_pending(sub: Subscription) -> Conflict:
    return Conflict(
        "A payment for this subscription is in progress; try again shortly.",
        code=ErrorCode.SUBSCRIPTION_PAYMENT_PENDING,
        details={"subscription_id": sub.id, "invoice_id": sub.open_invoice_id},
    )


def period_line(plan: Plan, start: datetime, end: datetime) -> invoices.Line:
    return invoices.Line(
        "subscription",
        f"{plan.name} ({start:%Y-%m-%d} to {end:%Y-%m-%d})",
        plan.price_micros,
        (start, end),
    )


def open_invoice(
    session: Session,
    sub: Subscription,
    *,
    reason: BillingReason,
    lines: list[invoices.Line],
    source: str,
    meta: dict[str, Any] | None = None,
) -> Invoice:
    """Finalize an invoice for the subscription to pay: its one open invoice."""
    wallet = session.get(Wallet, sub.account_id)
    assert wallet is not None
    invoice = invoices.issue_invoice(
        session,
        account_id=sub.account_id,
        currency=wallet.currency,
        lines=lines,
        source=source,
        status="open",
        subscription_id=sub.id,
        billing_reason=reason.value,
        meta=meta,
    )
    sub.open_invoice_id = invoice.id
    sub.latest_invoice_id = invoice.id
    return invoice


def grant_period_credits(
    session: Session, sub: Subscription, plan: Plan, less: int = 0, carried: int = 0
) -> None:
    if plan.included_credits_micros:
        credits.grant(
            session,
            sub,
            amount_micros=plan.included_credits_micros - less,
            carried_micros=carried,
            expires_at=sub.current_period_end,
            description=_credits_description(sub, plan, less),
        )


def period_grant(sub: Subscription, plan: Plan) -> credits.Granted | None:
    """What `grant_period_credits` grants for a period whose credits are all new (none
    used ahead, none carried in holds), to write with `credits.write_grants`."""
    if not plan.included_credits_micros:
        return None
    return credits.new_grant(
        sub,
        amount_micros=plan.included_credits_micros,
        expires_at=sub.current_period_end,
        description=_credits_description(sub, plan, 0),
    )


def _credits_description(sub: Subscription, plan: Plan, less: int) -> str:
    return f"Included credits: {plan.name}, until {sub.current_period_end:%Y-%m-%d}" + (
        f" (less {from_micros(less)} used ahead in the previous period)" if less else ""
    )


def schedule_renewal(session: Session, sub: Subscription) -> None:
    jobs.enqueue_job(session, renewal_job(sub))


def renewal_job(sub: Subscription) -> jobs.NewJob:
    """The job that renews the subscription at the end of its current period."""
    return jobs.NewJob(
        kind=RENEW_JOB,
        account_id=sub.account_id,
        payload={"subscription_id": sub.id, "period_end": sub.current_period_end.isoformat()},
        run_at=sub.current_period_end,
        dedupe_key=f"renew:{sub.id}:{sub.current_period_end.isoformat()}",
    )


def void(session: Session, sub: Subscription, invoice: Invoice) -> None:
    """An open invoice of the subscription that will not be paid."""
    invoices.close_unpaid(session, invoice, status="void")
    if sub.open_invoice_id == invoice.id:
        sub.open_invoice_id = None


# Why a subscription ended, as its `subscription.canceled` event says.
END_REASONS = {
    Event.CANCEL: "canceled_by_customer",
    Event.PERIOD_ENDED: "canceled_at_period_end",
    Event.DUNNING_CANCELED: "payment_failed",
}


def end(session: Session, sub: Subscription, event: Event) -> None:
    """Cancel the subscription now by `event` (one of `END_REASONS`); its included credits
    end with it."""
    current = now()
    states.transition(sub, event)
    sub.ended_at = current
    sub.canceled_at = sub.canceled_at or current
    sub.scheduled_plan_id = None
    credits.expire_subscription_grants_now(session, sub)
    emit(session, "canceled", sub, reason=END_REASONS[event])
