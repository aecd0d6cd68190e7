"""Paying subscription invoices: payment attempts of the one attempt machine.

Every subscription charge pays an invoice that was finalized first (`open`), in the
transaction that made the change it bills for. Paying it is three steps:

1. reserve the invoice's next attempt (under the subscription's and the invoice's row
   locks): a payment attempt (`billfold.payments.attempts`, purpose
   `subscription_invoice`) whose processor idempotency key `<invoice>:<n>` is kept on
   the invoice (`attempt_key`) until the outcome is recorded. Whoever comes next while
   it is set (a second worker, fix-payment, a retried request) reuses it, so the
   processor sees one charge;
2. charge the card with that key, outside any transaction;
3. the machine records the outcome once; its handlers here (see `register`) post the
   payment, mark the invoice paid or note the error, and hand it to the subscription's
   `Outcomes` (its new state, credits, next job and events) in the same transaction.

The machine's janitor records an outcome the process died before recording: it asks
the processor by key and never starts a charge. A charge that never reached the
processor is dropped (`Outcomes.dropped`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.db import lock_rows, transaction_memo
from billfold.errors import ErrorCode
from billfold.invoices import service as invoices
from billfold.invoices.models import Invoice
from billfold.ledger import service as ledger
from billfold.payments import attempts as payment_attempts
from billfold.payments import janitor
from billfold.payments import service as payments
from billfold.payments.models import AttemptPurpose, FailureReason, Payment, PaymentAttempt
from billfold.processors.base import Card, ChargeResult
from billfold.subscriptions.models import Subscription

if TYPE_CHECKING:
    from billfold.services import Services

log = logging.getLogger("billfold.subscriptions")

PURPOSE = AttemptPurpose.SUBSCRIPTION_INVOICE
# The previous design's settle job: still handled (by `settle_in_flight`) for jobs queued
# before the attempt machine; no new ones are queued.
SETTLE_JOB = "subscriptions.settle_attempt"
SETTLE_DELAY = payment_attempts.STALE_AFTER
REVENUE = "revenue:subscriptions"


@dataclass(frozen=True)
class Paid:
    """The outcome of paying an invoice: succeeded, and the recorded payment if any."""

    succeeded: bool
    payment: Payment | None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class Outcomes:
    """What the subscription makes of its invoice's payment (in the recording txn)."""

    paid: Callable[[Session, Subscription, Invoice], None]
    failed: Callable[[Session, Subscription, Invoice, dict[str, Any], str], None]
    dropped: Callable[[Session, Subscription, Invoice], None]  # never reached the processor


OutcomesFor = Callable[["Services"], Outcomes]


def register(outcomes_for: OutcomesFor) -> None:
    """Handle subscription-invoice attempts with the subscription engine's outcomes (as
    `outcomes_for` builds them from the services the attempt is settled with); called
    once, when the engine is imported (again: a no-op)."""
    payment_attempts.locking(PURPOSE).subscribe(_lock_for_settling)
    payment_attempts.on_success(PURPOSE).subscribe(_Charged(outcomes_for))
    payment_attempts.on_failure(PURPOSE).subscribe(_NotCharged(outcomes_for))


def _outcomes(outcomes_for: OutcomesFor, event: payment_attempts.Settled) -> Outcomes:
    assert event.services is not None, "subscription invoice attempts are settled with services"
    return outcomes_for(event.services)


@dataclass(frozen=True)
class _Charged:
    """The attempt's charge succeeded: the invoice is paid, once."""

    outcomes_for: OutcomesFor

    def __call__(self, session: Session, event: payment_attempts.Settled) -> Paid:
        sub, invoice = _locked_for_settling(session, event.attempt)
        payment = event.payment
        assert payment is not None
        if invoice.attempt_key != event.attempt.key:
            if invoice.payment_intent_id != payment.id:
                # Charged for an invoice closed meanwhile: the money is the account's.
                payments.credit_purchase(
                    session,
                    payment,
                    kind="wallet_funding",
                    usecase="wallet_funding",
                    description="Subscription payment credited to the wallet (invoice closed)",
                )
            return Paid(invoice.status == "paid", payment)
        if event.card is not None:
            payments.save_card(
                session, account_id=sub.account_id, card=event.card, make_default=True
            )
        post_payment(session, invoice, payment)
        invoice.attempt_key = None  # written with mark_paid's changes, in one UPDATE
        invoice.last_payment_error = None
        invoices.mark_paid(session, invoice, payment_intent_id=payment.id)
        _outcomes(self.outcomes_for, event).paid(session, sub, invoice)
        return Paid(True, payment)


@dataclass(frozen=True)
class _NotCharged:
    """Declined, the card gone, or never charged: the invoice stays owed."""

    outcomes_for: OutcomesFor

    def __call__(self, session: Session, event: payment_attempts.Settled) -> Paid:
        sub, invoice = _locked_for_settling(session, event.attempt)
        if invoice.attempt_key != event.attempt.key:
            return Paid(invoice.status == "paid", event.payment)
        invoice.attempt_key = None
        outcomes = _outcomes(self.outcomes_for, event)
        trigger = str((invoice.meta or {}).get("attempt_trigger", "unknown"))
        if event.reason == FailureReason.DECLINED:
            payment = event.payment
            assert payment is not None
            error = {
                "code": ErrorCode.PAYMENT_DECLINED.value,
                "decline_code": payment.decline_code or "generic_decline",
                "message": payment.failure_message or "The card was declined.",
                "payment_intent_id": payment.id,
            }
            invoice.last_payment_error = error
            outcomes.failed(session, sub, invoice, error, trigger)
            return Paid(False, payment, error)
        if event.reason == FailureReason.CARD_UNAVAILABLE:
            return _failed_uncharged(
                session,
                sub,
                invoice,
                outcomes,
                trigger,
                code=ErrorCode.PAYMENT_METHOD_UNAVAILABLE,
                decline_code="payment_method_unavailable",
                message="The card to charge is no longer available.",
            )
        outcomes.dropped(session, sub, invoice)
        log.warning("dropped subscription payment attempt %s: never charged", event.attempt.key)
        return Paid(False, None)


@dataclass(frozen=True)
class Attempt:
    invoice_id: str
    subscription_id: str
    account_id: str
    key: str
    payment_method_id: str
    amount_micros: int
    currency: str
    payment: payment_attempts.Attempt  # the machine's attempt

    @classmethod
    def of(cls, payment: payment_attempts.Attempt) -> Attempt:
        return cls(
            invoice_id=str(payment.context["invoice_id"]),
            subscription_id=str(payment.context["subscription_id"]),
            account_id=payment.account_id,
            key=payment.key,
            payment_method_id=payment.payment_method_id,
            amount_micros=payment.amount_micros,
            currency=payment.currency,
            payment=payment,
        )


def lock_subscription(session: Session, subscription_id: str) -> Subscription | None:
    return session.scalars(
        select(Subscription)
        .where(Subscription.id == subscription_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def lock_subscriptions(session: Session, subscription_ids: list[str]) -> dict[str, Subscription]:
    """Several subscriptions, locked in id order (`db.lock_rows`), by id."""
    return lock_rows(session, Subscription, Subscription.id, subscription_ids)


def lock_invoice(session: Session, invoice_id: str) -> Invoice:
    """Lock order: the subscription first, then its invoice."""
    return session.scalars(
        select(Invoice)
        .where(Invoice.id == invoice_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def _lock_pair(
    session: Session, subscription_id: str, invoice_id: str
) -> tuple[Subscription, Invoice]:
    sub = lock_subscription(session, subscription_id)
    assert sub is not None
    return sub, lock_invoice(session, invoice_id)


def _lock_pair_of(
    session: Session, attempt: payment_attempts.Attempt
) -> tuple[Subscription, Invoice]:
    return _lock_pair(
        session, str(attempt.context["subscription_id"]), str(attempt.context["invoice_id"])
    )


_SETTLING = "billfold.subscriptions.settling"


def _lock_for_settling(session: Session, attempt: payment_attempts.Attempt) -> None:
    """Before the attempt row: the subscription, then its invoice (kept for the outcome's
    handler, which the machine calls next in this transaction, so that it does not
    select them again)."""
    transaction_memo(session)[_SETTLING] = (attempt.id, _lock_pair_of(session, attempt))


def _locked_for_settling(
    session: Session, attempt: payment_attempts.Attempt
) -> tuple[Subscription, Invoice]:
    """The pair `_lock_for_settling` locked for this attempt (locked now if it did not)."""
    kept = transaction_memo(session).pop(_SETTLING, None)
    if kept is not None and kept[0] == attempt.id:
        pair: tuple[Subscription, Invoice] = kept[1]
        return pair
    return _lock_pair_of(session, attempt)


def reserve(session: Session, invoice: Invoice, *, payment_method_id: str, trigger: str) -> Attempt:
    """The attempt in flight on this invoice, or a new one (the caller holds its lock)."""
    assert invoice.subscription_id is not None
    if invoice.attempt_key is None:
        invoice.attempt_count += 1
        operation = f"{invoice.id}:{invoice.attempt_count}"
        invoice.attempt_payment_method_id = payment_method_id
        invoice.meta = {**(invoice.meta or {}), "attempt_trigger": trigger}
    else:  # in flight (an attempt reserved before the machine existed is adopted)
        operation = invoice.attempt_key
    assert invoice.attempt_payment_method_id is not None
    with session.no_autoflush:  # the invoice's changes go in one UPDATE, after the attempt
        payment = payment_attempts.begin(
            session,
            purpose=PURPOSE,
            operation=operation,
            account_id=invoice.account_id,
            amount_micros=invoice.total_micros,
            currency=invoice.currency,
            payment_method_id=invoice.attempt_payment_method_id,
            payment_purpose=invoice.billing_reason or "subscription",
            context={"invoice_id": invoice.id, "subscription_id": invoice.subscription_id},
        )
    invoice.attempt_key = payment.key
    session.flush()
    return Attempt.of(payment)


def pay_invoice(
    services: Services,
    invoice_id: str,
    *,
    outcomes: Outcomes,
    trigger: str,
    payment_method_id: str | None = None,
    card: Card | None = None,
    after_attempt: int | None = None,
) -> Paid:
    """Attempt to pay an open subscription invoice (at most one charge in flight); with
    `after_attempt`, only if nothing but fix-payment tried it again since that attempt
    (see `_tried_again`), and `AttemptInFlight` (nothing written) while one is."""
    database = services.database
    with database.transaction() as session:
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None and invoice.subscription_id is not None
        sub, invoice = _lock_pair(session, invoice.subscription_id, invoice_id)
        if invoice.status != "open":
            return Paid(invoice.status == "paid", None)
        if after_attempt is not None:
            if invoice.attempt_key is not None:
                raise AttemptInFlight(f"invoice {invoice.id} has an attempt in flight")
            if _tried_again(invoice, after_attempt):
                return Paid(False, None)
        if invoice.total_micros <= 0:
            invoices.mark_paid(session, invoice, payment_intent_id=None)
            outcomes.paid(session, sub, invoice)
            return Paid(True, None)
        if invoice.attempt_key is None and payment_method_id is None:
            default = payments.default_payment_method(session, invoice.account_id, to_charge=True)
            if default is None:
                return _failed_uncharged(
                    session,
                    sub,
                    invoice,
                    outcomes,
                    trigger,
                    code=ErrorCode.PAYMENT_METHOD_REQUIRED,
                    decline_code="no_payment_method",
                    message="The account has no default card to charge.",
                )
            payment_method_id = default.id
        attempt = reserve(
            session, invoice, payment_method_id=payment_method_id or "", trigger=trigger
        )
    return pay_reserved(services, attempt, card=card)


def pay_reserved(
    services: Services,
    attempt: Attempt,
    *,
    card: Card | None = None,
    customer_id: str | None = None,
) -> Paid:
    """Charge an attempt reserved (and committed) on its invoice, and record the outcome
    (`card`: one not on file yet, kept once charged; `customer_id`: the account's
    processor customer, if the caller read it already)."""
    outcome = payment_attempts.run(
        services.database,
        services.processor,
        attempt.payment,
        description=description(attempt),
        prepare=lambda _customer_id: card,
        services=services,
        customer_id=customer_id,
    )
    if outcome.recorded and isinstance(outcome.value, Paid):
        return outcome.value
    with services.database.read() as session:  # recorded by someone else
        current = session.get(Invoice, attempt.invoice_id)
        assert current is not None
        return Paid(current.status == "paid", outcome.payment)


FIX_TRIGGER = "fix"  # fix-payment: the account's own attempt, outside the renewal's schedule


class AttemptInFlight(RuntimeError):
    """An attempt on the invoice is in flight: the caller tries again once it is settled
    (a job: its retry)."""


def _tried_again(invoice: Invoice, after_attempt: int) -> bool:
    """Whether the invoice's payment was taken up again after attempt `after_attempt` (none
    in flight now) by the renewal's own schedule: a dunning retry, another pay-again. A
    later fix-payment's does not count: it schedules no retry when it fails, so the
    schedule would otherwise stop there."""
    last_trigger = (invoice.meta or {}).get("attempt_trigger")
    return invoice.attempt_count != after_attempt and last_trigger != FIX_TRIGGER


def _failed_uncharged(
    session: Session,
    sub: Subscription,
    invoice: Invoice,
    outcomes: Outcomes,
    trigger: str,
    *,
    code: ErrorCode,
    decline_code: str,
    message: str,
) -> Paid:
    """An attempt that failed before any card was charged (no card to charge)."""
    error = {"code": code.value, "decline_code": decline_code, "message": message}
    invoice.last_payment_error = error
    outcomes.failed(session, sub, invoice, error, trigger)
    return Paid(False, None, error)


def description(attempt: Attempt) -> str:
    return f"Subscription {attempt.subscription_id}, invoice {attempt.invoice_id}"


def charge(services: Services, attempt: Attempt) -> ChargeResult:
    """The processor call of an attempt, alone (the machine's `run` also records it)."""
    processor = services.processor
    customer_id = payments.ensure_customer(services.database, processor, attempt.account_id)
    return payment_attempts.charge(
        processor, attempt.payment, customer_id=customer_id, description=description(attempt)
    )


def post_payment(session: Session, invoice: Invoice, payment: Payment) -> str:
    """The card money of a subscription payment: clearing → subscription revenue (the
    id of the ledger transaction)."""
    return ledger.post_entry(session, payment_entry(invoice, payment)).id


def payment_entry(invoice: Invoice, payment: Payment) -> ledger.Entry:
    """`post_payment`'s transaction, to post with others (`ledger.post_many`)."""
    return ledger.Entry(
        account_id=invoice.account_id,
        kind="subscription_payment",
        usecase="subscription",
        description=f"Subscription payment, invoice {invoice.number}",
        payment_id=payment.id,
        reference=f"payment:{payment.id}",
        postings=[
            ledger.Posting(ledger.PROCESSOR_CLEARING, -payment.amount_micros),
            ledger.Posting(REVENUE, payment.amount_micros),
        ],
        meta={"invoice_id": invoice.id, "subscription_id": invoice.subscription_id},
    )


def settle_in_flight(services: Services, invoice_id: str, *, outcomes: Outcomes) -> None:
    """Settle the invoice's attempt in flight through the payment janitor: record what
    the processor did (never starting a charge); one that never reached it is dropped."""
    with services.database.read() as session:
        invoice = session.get(Invoice, invoice_id)
        if invoice is None or invoice.attempt_key is None:
            return
        found = session.scalars(
            select(PaymentAttempt.id).where(PaymentAttempt.key == invoice.attempt_key)
        ).first()
    if found is None:  # reserved before the machine existed: adopt it
        with services.database.transaction() as session:
            invoice = session.get(Invoice, invoice_id)
            assert invoice is not None and invoice.subscription_id is not None
            _, invoice = _lock_pair(session, invoice.subscription_id, invoice_id)
            if invoice.attempt_key is None:
                return
            found = reserve(
                session,
                invoice,
                payment_method_id=invoice.attempt_payment_method_id or "",
                trigger="settle",
            ).payment.id
    janitor.settle(services, found)
