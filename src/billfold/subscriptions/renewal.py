"""Renewal: at a period's end the subscription ends (canceled at period end) or rolls into
the next period, whose invoice is finalized and charged.

A renewal is a job at the period's end (`engine.RENEW_JOB`), so the sandbox test clock
can drive a subscription through a year; a scheduled plan change takes effect here.

The worker hands the renewal jobs it claims to `prepare_renewals` together. The plain
ones (an active or trialing subscription whose period ends as its job says, with no
invoice open and nothing scheduled for that moment) roll into their next period in one
transaction of a few multi-row statements, which finalizes their invoices and reserves
the first payment attempt of each that has a total to pay and a default card. The first
of those jobs to run charges all the batch's reserved attempts in one processor call and
records the successful charges together (`renewals_paid`); each job then takes its own
outcome, or pays alone (a decline, a charge that raised). A job without an attempt pays
its invoice as `run_renewal` does after its roll (a free period, no card). Every other
renewal takes `run_renewal`, one at a time.

The batch's attempts may be charged some time after they were reserved (the batch's
other jobs ran first): the payment machine marks a charge start again before a charge
that comes more than `MARK_AGAIN_AFTER` after its attempt's mark (or, if the janitor
settled the attempt as never charged meanwhile, makes no charge: its drop pays the
invoice again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from billfold.accounts.models import Account
from billfold.clock import as_utc, now
from billfold.invoices import service as invoices
from billfold.invoices.models import Invoice
from billfold.jobs.service import ClaimedJob
from billfold.ledger.models import Wallet
from billfold.payments import attempts as payment_attempts
from billfold.payments.models import PaymentMethod
from billfold.subscriptions import attempts, states
from billfold.subscriptions.engine import end, lock, lock_invoice, open_invoice, period_line
from billfold.subscriptions.models import Plan, Subscription
from billfold.subscriptions.outcomes import pay_invoice
from billfold.subscriptions.periods import add_periods
from billfold.subscriptions.renewals_paid import Payer
from billfold.subscriptions.states import BillingReason, Event

if TYPE_CHECKING:
    from billfold.services import Services

TRIGGER = "renewal"


def run_renewal(services: Services, job: ClaimedJob) -> None:
    """At a period's end: end it (cancel_at_period_end), or open the next period's invoice
    and charge it. Safe to run twice: the second run finds the period already rolled and
    joins the same payment attempt."""
    sub_id, period_end = _due(job)
    with services.database.transaction() as session:
        sub = lock(session, sub_id)
        invoice_id = roll_period(session, sub, period_end)
    if invoice_id is not None:
        pay_invoice(services, invoice_id, trigger=TRIGGER)


def _due(job: ClaimedJob) -> tuple[str, datetime]:
    """The subscription a renewal job renews, and the end of the period it renews after."""
    return str(job.payload["subscription_id"]), datetime.fromisoformat(
        str(job.payload["period_end"])
    )


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
    cycle = _roll(sub, plan, period_end)
    invoice = open_invoice(
        session,
        sub,
        reason=BillingReason.CYCLE,
        lines=cycle.lines,
        source=cycle.source,
        meta=cycle.meta,
    )
    return invoice.id


@dataclass(frozen=True)
class _Cycle:
    """What the invoice of a new period bills."""

    lines: list[invoices.Line]
    source: str
    meta: dict[str, Any]


def _roll(sub: Subscription, plan: Plan, period_end: datetime) -> _Cycle:
    """Move the subscription into the period after `period_end`."""
    sub.cycle_number += 1
    sub.current_period_start = period_end
    sub.current_period_end = add_periods(
        as_utc(sub.cycle_anchor), plan.period, sub.cycle_number + 1
    )
    return _Cycle(
        lines=[period_line(plan, sub.current_period_start, sub.current_period_end)],
        source=f"subscription:{sub.id}:cycle:{period_end.isoformat()}",
        meta={"period_start": period_end.isoformat()},
    )


# --- many at once -------------------------------------------------------------------


def prepare_renewals(services: Services, jobs: list[ClaimedJob]) -> dict[int, Callable[[], object]]:
    """Roll the plain renewals among `jobs` together and reserve their first attempts
    (one transaction); what is left of each job, to run on its own: its attempt's outcome
    (the first of them charges them all and records their successes together: see
    `renewals_paid`), paying its invoice (nothing to charge, or no card), or
    `run_renewal`."""
    with services.database.transaction() as session:
        rolled = _roll_plain(session, [_due(job) for job in jobs])
    payer = Payer(
        services,
        [(r.attempt, r.customer_id) for r in rolled.values() if isinstance(r, _Reserved)],
    )
    rest: dict[int, Callable[[], object]] = {}
    for job in jobs:
        renewed = rolled.pop(_due(job), None)  # a second job for it renews alone
        if renewed is None:
            rest[job.id] = partial(run_renewal, services, job)
        elif isinstance(renewed, _Reserved):
            rest[job.id] = partial(payer.pay, renewed.attempt, renewed.customer_id)
        else:
            rest[job.id] = partial(pay_invoice, services, renewed, trigger=TRIGGER)
    return rest


@dataclass(frozen=True)
class _Reserved:
    """A renewal's first attempt reserved in its batch, and the account's processor
    customer (None: not created yet, `run` creates it)."""

    attempt: attempts.Attempt
    customer_id: str | None


def _roll_plain(
    session: Session, due: list[tuple[str, datetime]]
) -> dict[tuple[str, datetime], _Reserved | str]:
    """Roll the plain renewals among `due` (subscription, end of the period it renews
    after), finalize their invoices and reserve the first attempt of each with a total to
    pay and a default card; that attempt, or the invoice to pay, of each."""
    current = now()
    subs = attempts.lock_subscriptions(session, sorted({sub_id for sub_id, _ in due}))
    plain = [
        (subs[sub_id], period_end)
        for sub_id, period_end in dict.fromkeys(due)  # twice the same job: rolled once
        if sub_id in subs and _is_plain(subs[sub_id], period_end, current)
    ]
    if not plain:
        return {}
    plans = {
        plan.id: plan
        for plan in session.scalars(select(Plan).where(Plan.id.in_({s.plan_id for s, _ in plain})))
    }
    account_ids = {sub.account_id for sub, _ in plain}
    currencies = dict(
        session.execute(
            select(Wallet.account_id, Wallet.currency).where(Wallet.account_id.in_(account_ids))
        ).all()
    )
    cards: dict[str, str] = {}
    customers: dict[str, str | None] = {}
    for account_id, card, customer in session.execute(
        select(PaymentMethod.account_id, PaymentMethod.id, Account.processor_customer_id)
        .join(Account, Account.id == PaymentMethod.account_id)
        .where(PaymentMethod.account_id.in_(account_ids), PaymentMethod.is_default.is_(True))
        .with_for_update(read=True, of=PaymentMethod)  # as default_payment_method(to_charge)
    ):
        cards[account_id], customers[account_id] = card, customer
    drafts: list[invoices.OpenInvoice] = []
    rolled: dict[tuple[str, datetime], str] = {}
    for sub, period_end in plain:
        cycle = _roll(sub, plans[sub.plan_id], period_end)
        invoice_id = invoices.new_invoice_id()
        drafts.append(
            invoices.OpenInvoice(
                id=invoice_id,
                account_id=sub.account_id,
                currency=currencies[sub.account_id],
                lines=cycle.lines,
                source=cycle.source,
                subscription_id=sub.id,
                billing_reason=BillingReason.CYCLE.value,
                meta=cycle.meta,
            )
        )
        rolled[(sub.id, period_end)] = invoice_id
    totals = invoices.issue_open_invoices(session, drafts)
    for sub, period_end in plain:
        sub.open_invoice_id = sub.latest_invoice_id = rolled[(sub.id, period_end)]
    to_charge = [draft for draft in drafts if totals[draft.id] > 0 and draft.account_id in cards]
    reserved = {
        invoice_id: _Reserved(attempt, customers[attempt.account_id])
        for invoice_id, attempt in _reserve_first(session, to_charge, totals, cards).items()
    }
    return {due: reserved.get(invoice_id, invoice_id) for due, invoice_id in rolled.items()}


def _reserve_first(
    session: Session,
    drafts: list[invoices.OpenInvoice],
    totals: dict[str, int],
    cards: dict[str, str],
) -> dict[str, attempts.Attempt]:
    """The first payment attempts of invoices just issued (as `attempts.reserve` makes an
    invoice's first, on the account's default card), by invoice id."""
    first = [
        payment_attempts.NewAttempt(
            purpose=attempts.PURPOSE,
            operation=f"{draft.id}:1",  # as attempts.reserve names an invoice's first
            account_id=draft.account_id,
            amount_micros=totals[draft.id],
            currency=draft.currency,
            payment_method_id=cards[draft.account_id],
            payment_purpose=draft.billing_reason,
            context={"invoice_id": draft.id, "subscription_id": draft.subscription_id},
        )
        for draft in drafts
    ]
    begun = payment_attempts.begin_first(session, first)
    if begun:
        session.execute(
            update(Invoice),
            [
                {
                    "id": draft.id,
                    "attempt_count": 1,
                    "attempt_key": attempt.key,
                    "attempt_payment_method_id": attempt.payment_method_id,
                    "meta": {**draft.meta, "attempt_trigger": TRIGGER},
                }
                for draft, attempt in zip(drafts, begun, strict=True)
            ],
        )
    return {
        draft.id: attempts.Attempt.of(attempt) for draft, attempt in zip(drafts, begun, strict=True)
    }


def _is_plain(sub: Subscription, period_end: datetime, current: datetime) -> bool:
    """Due now to roll into a next period like the last, with no invoice open."""
    return (
        sub.open_invoice_id is None
        and states.can(sub, Event.RENEW)
        and as_utc(sub.current_period_end) == period_end
        and current >= period_end
        and not sub.cancel_at_period_end
        and sub.scheduled_plan_id is None
    )
