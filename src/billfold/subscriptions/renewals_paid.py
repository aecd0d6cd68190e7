"""Renewals paid together: a worker's batch of reserved renewal attempts, charged in one
processor call (`charge_many`), and their successful charges recorded in one transaction.

`renewal.prepare_renewals` reserves the first attempt of each plain renewal of a batch.
Paid one at a time (`attempts.pay_reserved`), each is charged and then recorded in a
transaction of its own: some twenty statements, most through the ORM. Here the batch's
attempts are charged by one processor call (the sandbox writes them in one transaction;
Stripe, which has no batch call, makes them one after another), and the successful
charges are recorded together, by a few multi-row statements for all of them. For each,
they write what `attempts._Charged` and `outcomes._renewal_paid` write for one: the
attempt settled, its janitor jobs dropped, the payment, the invoice paid, the payment's
and the included credits' ledger transactions, the credit grant and its expiry, the
subscription renewed and its next renewal, and the same events.

Anything else takes the one-at-a-time way: a decline, a charge that raised, a customer not
created yet, an attempt settled meanwhile, a subscription or invoice no longer as it was
when reserved, or a batch whose recording failed as a whole (rolled back). Each of those
jobs calls `pay_reserved`, which charges again under the attempt's key: the processor
answers the charge it made under that key, or makes the one it did not.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.clock import now
from billfold.db import lock_rows
from billfold.invoices import service as invoices
from billfold.invoices.models import Invoice
from billfold.jobs import service as jobs
from billfold.ledger import service as ledger
from billfold.payments import attempts as payment_attempts
from billfold.processors.base import ChargeResult
from billfold.subscriptions import attempts, credits, states
from billfold.subscriptions.attempts import Paid
from billfold.subscriptions.engine import period_grant, renewal_job
from billfold.subscriptions.models import Plan, Subscription
from billfold.subscriptions.outcomes import emit_renewed
from billfold.subscriptions.states import BillingReason, Event, SubscriptionStatus

if TYPE_CHECKING:
    from billfold.services import Services

log = logging.getLogger("billfold.subscriptions")


class Payer:
    """The reserved first attempts of one batch of renewals (each with the account's
    processor customer, None if not created yet): the first job to pay its attempt pays
    them all; each job then takes its own outcome, or pays alone."""

    def __init__(
        self, services: Services, reserved: list[tuple[attempts.Attempt, str | None]]
    ) -> None:
        self._services = services
        self._reserved = reserved
        self._paid: dict[str, Paid] | None = None

    def pay(self, attempt: attempts.Attempt, customer_id: str | None) -> Paid:
        if self._paid is None:
            self._paid = {}
            try:
                self._paid = pay_together(self._services, self._reserved)
            except Exception:
                log.exception(
                    "%d renewal charges could not be recorded together; each is paid alone",
                    len(self._reserved),
                )
        paid = self._paid.get(attempt.key)
        if paid is not None:
            return paid
        return attempts.pay_reserved(self._services, attempt, customer_id=customer_id)


def pay_together(
    services: Services, reserved: list[tuple[attempts.Attempt, str | None]]
) -> dict[str, Paid]:
    """Charge the reserved attempts (one `charge_many`) and record the successful charges
    together; the outcome of each attempt recorded here, by key."""
    # An account's processor customer not created yet: `run` creates it first.
    known = [(attempt, customer_id) for attempt, customer_id in reserved if customer_id]
    answers = payment_attempts.charge_begun(
        services.database,
        services.processor,
        [
            (attempt.payment, customer_id, attempts.description(attempt))
            for attempt, customer_id in known
        ],
    )
    charged = [
        (attempt, result)
        for (attempt, _), result in zip(known, answers, strict=True)
        if result is not None and result.succeeded
    ]
    if not charged:
        return {}
    with services.database.transaction() as session:
        return record_paid(session, charged, services=services)


def record_paid(
    session: Session,
    charged: list[tuple[attempts.Attempt, ChargeResult]],
    *,
    services: Services | None = None,
) -> dict[str, Paid]:
    """Record successful charges of renewal invoices' attempts, each as `_Charged` and
    `_renewal_paid` would, in the caller's transaction; those of attempts still in flight
    on an open renewal invoice of a subscription that renews on payment (the others are
    left for `pay_reserved`). Their outcomes, by attempt key."""
    twice = {
        sub_id
        for sub_id, count in Counter(a.subscription_id for a, _ in charged).items()
        if count > 1
    }
    # The lock order of a settle: the subscriptions, their invoices, then the attempts.
    subs = attempts.lock_subscriptions(session, [a.subscription_id for a, _ in charged])
    invoices_by_id = lock_rows(session, Invoice, Invoice.id, [a.invoice_id for a, _ in charged])
    ready = [
        (attempt, result)
        for attempt, result in charged
        if attempt.subscription_id not in twice
        and _renews_on_payment(
            subs.get(attempt.subscription_id), invoices_by_id.get(attempt.invoice_id), attempt
        )
    ]
    settled = payment_attempts.settle_charged(
        session, [(attempt.payment, result) for attempt, result in ready], services=services
    )
    by_id = {attempt.payment.id: attempt for attempt, _ in ready}
    plan_ids = {subs[attempt.subscription_id].plan_id for attempt, _ in ready}
    plans = {plan.id: plan for plan in session.scalars(select(Plan).where(Plan.id.in_(plan_ids)))}
    current = now()
    entries: list[ledger.Entry] = []
    grants: list[credits.Granted] = []
    renewals: list[jobs.NewJob] = []
    paid: dict[str, Paid] = {}
    renewed: list[tuple[Subscription, Invoice, SubscriptionStatus]] = []
    for event in settled:
        attempt, payment = by_id[event.attempt.id], event.payment
        assert payment is not None
        sub, invoice = subs[attempt.subscription_id], invoices_by_id[attempt.invoice_id]
        entries.append(attempts.payment_entry(invoice, payment))
        invoice.attempt_key = None
        invoice.last_payment_error = None
        invoices.set_paid(invoice, payment_intent_id=payment.id, at=current)
        sub.open_invoice_id = None
        sub.updated_at = current
        was = states.transition(sub, Event.RENEWAL_PAID)
        granted = period_grant(sub, plans[sub.plan_id])
        if granted is not None:
            grants.append(granted)
            if granted.entry is not None:
                entries.append(granted.entry)
        renewals.append(renewal_job(sub))
        renewed.append((sub, invoice, was))
        paid[attempt.key] = Paid(True, payment)
    credits.write_grants(session, grants)
    jobs.enqueue_new(session, renewals)
    for sub, invoice, was in renewed:
        invoices.emit_paid(session, invoice)
        emit_renewed(session, sub, was)
    # The wallets last, just before the commit: usage charges on them wait only for this.
    session.flush()
    ledger.post_many(session, entries)
    return paid


def _renews_on_payment(
    sub: Subscription | None, invoice: Invoice | None, attempt: attempts.Attempt
) -> bool:
    """Whether paying the attempt's invoice renews the subscription as `_renewal_paid`
    does, and only that: the attempt still the invoice's in flight on its open renewal
    invoice, the subscription's open invoice, and a status that renews on payment."""
    return (
        sub is not None
        and invoice is not None
        and invoice.status == "open"
        and invoice.attempt_key == attempt.key
        and invoice.billing_reason == BillingReason.CYCLE
        and sub.open_invoice_id == invoice.id
        and states.can(sub, Event.RENEWAL_PAID)
    )
