"""Renewal: at a period's end the subscription ends (canceled at period end) or rolls into
the next period, whose invoice is finalized and charged.

A renewal is a job at the period's end (`engine.RENEW_JOB`), so the sandbox test clock
can drive a subscription through a year; a scheduled plan change takes effect here.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from billfold.clock import as_utc, now
from billfold.jobs.service import ClaimedJob
from billfold.subscriptions import states
from billfold.subscriptions.engine import end, lock, lock_invoice, open_invoice, period_line
from billfold.subscriptions.models import Plan, Subscription
from billfold.subscriptions.outcomes import pay_invoice
from billfold.subscriptions.periods import add_periods
from billfold.subscriptions.states import BillingReason, Event

if TYPE_CHECKING:
    from billfold.services import Services


def run_renewal(services: Services, job: ClaimedJob) -> None:
    """At a period's end: end it (cancel_at_period_end), or open the next period's invoice
    and charge it. Safe to run twice: the second run finds the period already rolled and
    joins the same payment attempt."""
    sub_id = str(job.payload["subscription_id"])
    period_end = datetime.fromisoformat(str(job.payload["period_end"]))
    with services.database.transaction() as session:
        sub = lock(session, sub_id)
        invoice_id = roll_period(session, sub, period_end)
    if invoice_id is not None:
        pay_invoice(services, invoice_id, trigger="renewal")


def roll_period(session: Session, sub: Subscription, period_end: datetime) -> str | None:
    """The invoice to pay for the period after `period_end`, rolling into it if due."""
    if sub.open_invoice_id is not None:
        invoice = lock_invoice(session, sub.open_invoice_id)
        if (
            invoice.billing_reason == BillingReason.CYCLE
            and (invoice.meta or {}).get("period_start") == period_end.isoformat()
            and (invoice.attempt_count == 0 or invoice.attempt_key is not None)
        ):
            return invoice.id  # rolled already; its first charge never finished
        return None
    if not states.can(sub, Event.RENEW):
        return None  # paused (resume reschedules), past_due, canceled …
    if as_utc(sub.current_period_end) != period_end or now() < period_end:
        return None
    if sub.cancel_at_period_end:
        end(session, sub, Event.PERIOD_ENDED)
        return None
    if sub.scheduled_plan_id is not None:
        new_plan = session.get(Plan, sub.scheduled_plan_id)
        assert new_plan is not None
        previous = session.get(Plan, sub.plan_id)
        assert previous is not None
        sub.plan_id = new_plan.id
        sub.scheduled_plan_id = None
        if new_plan.period != previous.period:
            sub.cycle_anchor = period_end
            sub.cycle_number = -1
    plan = session.get(Plan, sub.plan_id)
    assert plan is not None
    sub.cycle_number += 1
    sub.current_period_start = period_end
    sub.current_period_end = add_periods(
        as_utc(sub.cycle_anchor), plan.period, sub.cycle_number + 1
    )
    invoice = open_invoice(
        session,
        sub,
        reason=BillingReason.CYCLE,
        lines=[period_line(plan, sub.current_period_start, sub.current_period_end)],
        source=f"subscription:{sub.id}:cycle:{period_end.isoformat()}",
        meta={"period_start": period_end.isoformat()},
    )
    return invoice.id
