"""What the account changes on a subscription: its plan (an upgrade now, prorated to the
second; anything else at the period's end), a new cycle now, pause and resume, cancel
(now or at the period's end), and paying a failed payment again.

Whether the subscription's status allows the change is the transition table's answer
(`states.check` / `states.transition`), with the 409 the API has always given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from billfold.clock import as_utc, now
from billfold.errors import Conflict, ErrorCode
from billfold.ids import new_id
from billfold.invoices import service as invoices
from billfold.money import round_to_cent
from billfold.payments import service as payments
from billfold.subscriptions import attempts, credits, states
from billfold.subscriptions.engine import (
    end,
    lock,
    lock_invoice,
    open_invoice,
    payment_pending,
    period_line,
    schedule_renewal,
    void,
)
from billfold.subscriptions.models import Plan, Subscription
from billfold.subscriptions.outcomes import pay_invoice
from billfold.subscriptions.periods import add_periods, prorate
from billfold.subscriptions.plans import subscribable_plan
from billfold.subscriptions.states import BillingReason, Event, PlanKind, SubscriptionStatus
from billfold.subscriptions.unused_time import credit_unused_time, unused_time
from billfold.subscriptions.views import answer, emit, get_for_account, view

if TYPE_CHECKING:
    from billfold.services import Services


def fix_payment(services: Services, *, account_id: str, subscription_id: str) -> dict[str, Any]:
    """Retry the open invoice now with the current default card."""
    with services.database.read() as session:
        sub = get_for_account(session, account_id=account_id, subscription_id=subscription_id)
        if not states.can(sub, Event.FIX_PAYMENT) or sub.open_invoice_id is None:
            raise states.refusal(sub, Event.FIX_PAYMENT)
        invoice_id = sub.open_invoice_id
        default = payments.default_payment_method(session, account_id)
        if default is None:
            raise payments.PaymentMethodRequired(
                "Add a card first (POST /billing/payment-methods): there is no default card."
            )
    paid = pay_invoice(
        services, invoice_id, trigger=attempts.FIX_TRIGGER, payment_method_id=default.id
    )
    return answer(services, paid, account_id=account_id, subscription_id=subscription_id)


def pause(session: Session, *, account_id: str, subscription_id: str) -> Subscription:
    """No renewals and no credit expiry while paused; the remaining time is frozen."""
    sub = lock(session, subscription_id, account_id)
    states.check(sub, Event.PAUSE)
    if sub.open_invoice_id is not None:
        raise payment_pending(sub)
    states.transition(sub, Event.PAUSE)
    sub.paused_at = now()
    sub.updated_at = now()
    emit(session, "paused", sub)
    return sub


def resume(session: Session, *, account_id: str, subscription_id: str) -> Subscription:
    """Restore the frozen remaining time: the period end moves by the paused duration."""
    sub = lock(session, subscription_id, account_id)
    states.check(sub, Event.RESUME)
    if sub.paused_at is None:
        raise states.refusal(sub, Event.RESUME)
    paused_for = now() - as_utc(sub.paused_at)
    states.transition(sub, Event.RESUME)
    sub.paused_at = None
    sub.cycle_anchor = as_utc(sub.cycle_anchor) + paused_for
    sub.current_period_end = as_utc(sub.current_period_end) + paused_for
    sub.updated_at = now()
    credits.shift_grants(session, sub, paused_for)
    schedule_renewal(session, sub)
    emit(session, "resumed", sub, paused_seconds=int(paused_for.total_seconds()))
    # Grants of other paused time that fell due meanwhile are not this one's; run the
    # account's due expiries (e.g. an addon's) now.
    credits.expire_due(session, sub.account_id)
    return sub


def change_plan(
    services: Services, *, account_id: str, subscription_id: str, new_plan_id: int
) -> dict[str, Any]:
    """Upgrade (a dearer plan of the same period) now, prorated to the second; anything
    else (cheaper, equal, or another period) at the end of the current period."""
    database = services.database
    with database.transaction() as session:
        sub = lock(session, subscription_id, account_id)
        kinds = (PlanKind(sub.kind),)  # a plan of the same kind
        new_plan = subscribable_plan(session, new_plan_id, kinds=kinds, account_id=account_id)
        plan = session.get(Plan, sub.plan_id)
        assert plan is not None
        states.check(sub, Event.CHANGE_PLAN)
        if sub.open_invoice_id is not None:
            raise payment_pending(sub)
        if new_plan.id == sub.plan_id:
            if sub.scheduled_plan_id is None:
                raise Conflict(
                    "The subscription is already on this plan.",
                    code=ErrorCode.PLAN_UNCHANGED,
                    details={"plan_id": new_plan_id},
                )
            sub.scheduled_plan_id = None  # staying: drop the scheduled change
            emit(session, "updated", sub, change="scheduled_change_canceled")
            return view(session, sub)
        upgrade = new_plan.period == plan.period and new_plan.price_micros > plan.price_micros
        trialing = sub.status == SubscriptionStatus.TRIALING
        if trialing or not upgrade:
            if trialing:
                sub.plan_id, sub.scheduled_plan_id = new_plan.id, None
                change = "trial_plan_changed"
            else:
                sub.scheduled_plan_id = new_plan.id
                change = "downgrade_scheduled"
            sub.updated_at = now()
            emit(session, "updated", sub, change=change)
            return view(session, sub)
        at = now()
        start, end_ = as_utc(sub.current_period_start), as_utc(sub.current_period_end)
        unused = round_to_cent(prorate(plan.price_micros, start=start, end=end_, at=at))
        remaining = round_to_cent(prorate(new_plan.price_micros, start=start, end=end_, at=at))
        credit_delta = prorate(
            (new_plan.included_credits_micros or 0) - (plan.included_credits_micros or 0),
            start=start,
            end=end_,
            at=at,
        )
        invoice = open_invoice(
            session,
            sub,
            reason=BillingReason.UPDATE,
            lines=[
                invoices.Line(
                    "proration",
                    f"Unused time on {plan.name} after {at:%Y-%m-%d %H:%M:%S} UTC",
                    -unused,
                    (at, end_),
                ),
                invoices.Line(
                    "proration",
                    f"Remaining time on {new_plan.name} after {at:%Y-%m-%d %H:%M:%S} UTC",
                    remaining,
                    (at, end_),
                ),
            ],
            source=f"subscription:{sub.id}:update:{new_id('chg')}",
            meta={
                "new_plan_id": new_plan.id,
                "previous_plan_id": plan.id,
                "credit_delta_micros": max(0, credit_delta),
                "prorated_at": at.isoformat(),
            },
        )
        invoice_id = invoice.id
    paid = pay_invoice(services, invoice_id, trigger="update")
    return answer(services, paid, account_id=account_id, subscription_id=subscription_id)


def reset_cycle(services: Services, *, account_id: str, subscription_id: str) -> dict[str, Any]:
    """Start a new period now; the unused part of the current one is credited on the new
    period's invoice, and the current period's included credits end."""
    database = services.database
    with database.transaction() as session:
        sub = lock(session, subscription_id, account_id)
        states.check(sub, Event.RESET_CYCLE)
        if sub.open_invoice_id is not None:
            raise payment_pending(sub)
        plan = session.get(Plan, sub.plan_id)
        assert plan is not None
        at = now()
        invoices.lock_series(session, "invoice")  # the series before the wallet
        unused = unused_time(session, sub, plan, at=at)
        credits.refuse_while_held(session, sub)  # the period's credits end now
        new_end = add_periods(at, plan.period, 1)
        lines = [
            *unused.lines(plan, at, as_utc(sub.current_period_end)),
            period_line(plan, at, new_end),
        ]
        invoice = open_invoice(
            session,
            sub,
            reason=BillingReason.RESET,
            lines=lines,
            source=f"subscription:{sub.id}:reset:{at.isoformat()}",
            meta={
                "period_start": at.isoformat(),
                "period_end": new_end.isoformat(),
                "unused_time_micros": unused.time_micros,
                "credits_allowance_micros": unused.allowance_micros,
                "credits_deducted_micros": unused.deduction_micros,
            },
        )
        invoice_id = invoice.id
    paid = pay_invoice(services, invoice_id, trigger="reset")
    return answer(services, paid, account_id=account_id, subscription_id=subscription_id)


def cancel(
    session: Session, *, account_id: str, subscription_id: str, at_period_end: bool
) -> Subscription:
    """At period end: renewals stop then. Now: ends it, credits the unused part of a paid
    period to the wallet (purchased credit) and ends the period's included credits."""
    sub = lock(session, subscription_id, account_id)
    states.check(sub, Event.CANCEL)  # an ended subscription cannot be canceled at all
    if at_period_end:
        states.check(sub, Event.SCHEDULE_CANCEL)
        sub.cancel_at_period_end = True
        sub.canceled_at = now()
        sub.updated_at = now()
        emit(session, "updated", sub, change="cancel_at_period_end")
        return sub
    period_unpaid = False
    if sub.open_invoice_id is not None:
        invoice = lock_invoice(session, sub.open_invoice_id)
        if invoice.attempt_key is not None:
            raise payment_pending(sub)
        # An active subscription's open renewal invoice bills the period it is in (rolled
        # in the transaction that issued it): that period was never paid for.
        period_unpaid = invoice.billing_reason == BillingReason.CYCLE
        void(session, sub, invoice)
    if sub.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAUSED) and not period_unpaid:
        invoices.lock_series(session, "credit_note")  # the series before the wallet
        plan = session.get(Plan, sub.plan_id)
        assert plan is not None
        unused = unused_time(session, sub, plan, at=as_utc(sub.paused_at or now()))
        credits.refuse_while_held(session, sub)  # the period's credits end now
        if unused.value_micros > 0:
            credit_unused_time(session, sub, unused)
    end(session, sub, Event.CANCEL)
    return sub
