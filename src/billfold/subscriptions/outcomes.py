"""What a subscription invoice's payment means for the subscription, by billing reason.

`attempts` pays an invoice (one processor charge per attempt) and hands its outcome to
the handlers here, in the transaction that records it: `PAID`, `FAILED` and `DROPPED`
(an attempt that never reached the processor), each a table keyed by the invoice's
`BillingReason`. Status changes go through `states.transition`. A failed renewal goes
to dunning with the operator's `DunningPolicy`, read from the settings of whoever pays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from billfold.clock import now
from billfold.invoices.models import Invoice
from billfold.jobs import service as jobs
from billfold.jobs.service import ClaimedJob
from billfold.money import ceil_to_cent
from billfold.processors.base import Card
from billfold.subscriptions import attempts, credits, dunning, states
from billfold.subscriptions.attempts import Paid
from billfold.subscriptions.dunning import DunningPolicy
from billfold.subscriptions.engine import end, grant_period_credits, schedule_renewal, void
from billfold.subscriptions.models import Plan, Subscription
from billfold.subscriptions.states import BillingReason, Event, SubscriptionStatus
from billfold.subscriptions.views import emit

if TYPE_CHECKING:
    from billfold.services import Services

# Card payments for subscriptions: their purpose is the invoice's billing reason.
PAYMENT_PURPOSES = tuple(BillingReason)


def _reason(invoice: Invoice) -> BillingReason:
    assert invoice.billing_reason is not None, invoice.id
    return BillingReason(invoice.billing_reason)


# --- paid ---------------------------------------------------------------------------


def _start_paid(session: Session, sub: Subscription, plan: Plan, invoice: Invoice) -> None:
    if states.can(sub, Event.FIRST_PAYMENT_SUCCEEDED):
        states.transition(sub, Event.FIRST_PAYMENT_SUCCEEDED)
        sub.incomplete_expires_at = None
        grant_period_credits(session, sub, plan)
        schedule_renewal(session, sub)
        emit(session, "created", sub)


def _renewal_paid(session: Session, sub: Subscription, plan: Plan, invoice: Invoice) -> None:
    if states.can(sub, Event.RENEWAL_PAID):
        was = states.transition(sub, Event.RENEWAL_PAID)
        grant_period_credits(session, sub, plan)
        schedule_renewal(session, sub)
        emit_renewed(session, sub, was)


def emit_renewed(session: Session, sub: Subscription, was: SubscriptionStatus) -> None:
    """The `subscription.renewed` event of a renewal paid, naming the status it recovered
    from (past due, trialing …), if it was not active."""
    recovered_from = was.value if was != SubscriptionStatus.ACTIVE else None
    emit(session, "renewed", sub, recovered_from=recovered_from)


def _upgrade_paid(session: Session, sub: Subscription, plan: Plan, invoice: Invoice) -> None:
    meta = invoice.meta or {}
    new_plan = session.get(Plan, int(meta["new_plan_id"]))
    assert new_plan is not None
    old_plan_id = sub.plan_id
    sub.plan_id = new_plan.id
    sub.scheduled_plan_id = None
    credits.grant(
        session,
        sub,
        amount_micros=int(meta.get("credit_delta_micros", 0)),
        expires_at=sub.current_period_end,
        description=f"Included credits: upgrade to {new_plan.name}, prorated",
    )
    emit(session, "updated", sub, previous_plan_id=old_plan_id, change="upgrade")


def _reset_paid(session: Session, sub: Subscription, plan: Plan, invoice: Invoice) -> None:
    meta = invoice.meta or {}
    # Credits spent ahead of time since the invoice was made, which its deduction
    # could still have covered, come off the new period's grant.
    _, spent = credits.spent_of_live_grants(session, sub)
    deductible = int(meta.get("unused_time_micros", 0))
    ahead = min(deductible, max(0, spent - int(meta.get("credits_allowance_micros", 0))))
    owed = max(0, ceil_to_cent(ahead) - int(meta.get("credits_deducted_micros", 0)))
    # Included credit that usage holds took while the reset was being paid (its request
    # refused while any was held) is neither spent nor unspent yet: the new period's
    # grant carries it on, so a capture spends the new period's credits and a release
    # gives them back.
    credits.expire_subscription_grants_now(session, sub, count_held=False)
    carried = credits.carry_held(
        session, sub.account_id, into=(plan.included_credits_micros or 0) - owed
    )
    start = datetime.fromisoformat(meta["period_start"])
    end_ = datetime.fromisoformat(meta["period_end"])
    sub.cycle_anchor = start
    sub.cycle_number = 0
    sub.current_period_start = start
    sub.current_period_end = end_
    grant_period_credits(session, sub, plan, less=owed, carried=carried)
    schedule_renewal(session, sub)
    emit(session, "updated", sub, change="reset_cycle")


PaidHandler = Callable[[Session, Subscription, Plan, Invoice], None]
PAID: dict[BillingReason, PaidHandler] = {
    BillingReason.CREATE: _start_paid,
    BillingReason.CYCLE: _renewal_paid,
    BillingReason.UPDATE: _upgrade_paid,
    BillingReason.RESET: _reset_paid,
}


def on_paid(session: Session, sub: Subscription, invoice: Invoice) -> None:
    """What a paid invoice completes, by its billing reason."""
    if sub.open_invoice_id == invoice.id:
        sub.open_invoice_id = None
    sub.updated_at = now()
    plan = session.get(Plan, sub.plan_id)
    assert plan is not None
    PAID[_reason(invoice)](session, sub, plan, invoice)


# --- failed -------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A failed attempt on an invoice: the processor's error and what made the attempt
    (`create`, `renewal`, `retry:<n>`, `fix`, `update`, `reset`)."""

    invoice: Invoice
    error: dict[str, Any]
    trigger: str
    policy: DunningPolicy


def _start_failed(session: Session, sub: Subscription, failure: Failure) -> None:
    """The start stays incomplete until fix-payment, a new start or its expiry."""
    emit(session, "payment_failed", sub, error=failure.error)


def _renewal_failed(session: Session, sub: Subscription, failure: Failure) -> None:
    """Past due, then dunning: the next retry, or the policy's end when they are spent."""
    if states.can(sub, Event.RENEWAL_FAILED):
        states.transition(sub, Event.RENEWAL_FAILED)
        emit(session, "past_due", sub)
    emit(session, "payment_failed", sub, error=failure.error)
    step = dunning.step_after(failure.trigger)
    if step is None or dunning.schedule_retry(session, failure.invoice, failure.policy, step=step):
        return
    final = failure.policy.final_event
    if not states.can(sub, final):
        return  # not in dunning (any more)
    if final == Event.DUNNING_UNPAID:
        states.transition(sub, final)
        emit(session, "updated", sub, change="unpaid")
        return
    void(session, sub, failure.invoice)
    end(session, sub, final)


def _change_failed(session: Session, sub: Subscription, failure: Failure) -> None:
    """An upgrade or a reset that was not paid for does not happen."""
    void(session, sub, failure.invoice)
    emit(session, "payment_failed", sub, error=failure.error)


FailedHandler = Callable[[Session, Subscription, Failure], None]
FAILED: dict[BillingReason, FailedHandler] = {
    BillingReason.CREATE: _start_failed,
    BillingReason.CYCLE: _renewal_failed,
    BillingReason.UPDATE: _change_failed,
    BillingReason.RESET: _change_failed,
}


def on_failed(session: Session, sub: Subscription, failure: Failure) -> None:
    """What a failed attempt means, by billing reason and by what triggered it."""
    sub.updated_at = now()
    FAILED[_reason(failure.invoice)](session, sub, failure)


# --- dropped (never reached the processor) ------------------------------------------


def _stays_open(session: Session, sub: Subscription, invoice: Invoice) -> None:
    """A start stays open for the account's next attempt (fix-payment, a new start) or
    its expiry."""


# A renewal whose attempt never reached the processor is paid again, by this job, at once.
PAY_AGAIN_JOB = "subscriptions.pay_again"
PAY_AGAIN_ATTEMPTS = 40  # the retries' backoff reaches 6 h: about 9 days in all


def _pay_again(session: Session, sub: Subscription, invoice: Invoice) -> None:
    """A renewal's attempt never reached the processor (its process died before the
    charge): nobody else would pay the invoice (the renewal job is spent, no dunning
    retry is queued before a failure), so a job pays it again, made by the same trigger,
    so that a failure then is dunned as it would have been."""
    jobs.enqueue(
        session,
        kind=PAY_AGAIN_JOB,
        account_id=invoice.account_id,
        payload={
            "invoice_id": invoice.id,
            "after_attempt": invoice.attempt_count,
            "trigger": str((invoice.meta or {}).get("attempt_trigger", "renewal")),
        },
        dedupe_key=f"pay-again:{invoice.id}:{invoice.attempt_count}",
        # While another attempt is in flight it waits on its retries (`AttemptInFlight`):
        # enough of them to outlast the janitor's week of rechecks of that attempt.
        max_attempts=PAY_AGAIN_ATTEMPTS,
    )


DroppedHandler = Callable[[Session, Subscription, Invoice], None]
DROPPED: dict[BillingReason, DroppedHandler] = {
    BillingReason.CREATE: _stays_open,
    BillingReason.CYCLE: _pay_again,
    BillingReason.UPDATE: void,  # the change it would have paid for is given up
    BillingReason.RESET: void,
}


def on_dropped(session: Session, sub: Subscription, invoice: Invoice) -> None:
    DROPPED[_reason(invoice)](session, sub, invoice)


# --- paying -------------------------------------------------------------------------


def outcomes(policy: DunningPolicy) -> attempts.Outcomes:
    """The handlers `attempts` calls, failures dunned by `policy`."""

    def failed(
        session: Session, sub: Subscription, invoice: Invoice, error: dict[str, Any], trigger: str
    ) -> None:
        on_failed(session, sub, Failure(invoice, error, trigger, policy))

    return attempts.Outcomes(paid=on_paid, failed=failed, dropped=on_dropped)


def outcomes_for(services: Services) -> attempts.Outcomes:
    return outcomes(DunningPolicy.from_settings(services.settings))


attempts.register(outcomes_for)


def pay_invoice(
    services: Services,
    invoice_id: str,
    *,
    trigger: str,
    payment_method_id: str | None = None,
    card: Card | None = None,
    after_attempt: int | None = None,
) -> Paid:
    return attempts.pay_invoice(
        services,
        invoice_id,
        outcomes=outcomes_for(services),
        trigger=trigger,
        payment_method_id=payment_method_id,
        card=card,
        after_attempt=after_attempt,
    )


def run_retry(services: Services, job: ClaimedJob) -> None:
    """A dunning retry fell due: pay the renewal invoice if it is still owed."""
    invoice_id = str(job.payload["invoice_id"])
    with services.database.read() as session:
        invoice = session.get(Invoice, invoice_id)
        if invoice is None or invoice.status != "open" or invoice.subscription_id is None:
            return
        sub = session.get(Subscription, invoice.subscription_id)
        if sub is None or not states.can(sub, Event.RETRY_PAYMENT):
            return
    pay_invoice(services, invoice_id, trigger=f"retry:{int(job.payload['step'])}")


def run_pay_again(services: Services, job: ClaimedJob) -> None:
    """Pay again a renewal invoice whose attempt never reached the processor, unless
    another attempt of the renewal's schedule was made on it since; while one is in
    flight (say a fix-payment's), the job runs again later (`attempts.AttemptInFlight`,
    the job's retry): if that one fails, nothing else would go on with dunning."""
    pay_invoice(
        services,
        str(job.payload["invoice_id"]),
        trigger=str(job.payload["trigger"]),
        after_attempt=int(job.payload["after_attempt"]),
    )


def run_settle(services: Services, job: ClaimedJob) -> None:
    """An attempt's settle job: record what the processor did, if nobody has."""
    invoice_id = str(job.payload["invoice_id"])
    with services.database.read() as session:
        invoice = session.get(Invoice, invoice_id)
        if invoice is None or invoice.attempt_key != job.payload["key"]:
            return
    attempts.settle_in_flight(services, invoice_id, outcomes=outcomes_for(services))
