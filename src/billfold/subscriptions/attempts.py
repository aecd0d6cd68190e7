"""Paying subscription invoices: one processor charge per attempt, however often it runs.

Every subscription charge pays an invoice that was finalized first (`open`), in the
transaction that made the change it bills for. Paying it is three steps:

1. reserve an attempt on the invoice (under the subscription's and the invoice's row
   locks): a processor idempotency key `<invoice>:<n>`, kept on the invoice until the
   outcome is recorded. Whoever comes next while it is set (a second worker,
   fix-payment, a retried request) reuses it, so the processor sees one charge;
2. charge the card with that key, outside any transaction;
3. record the outcome once (the attempt key must still be the invoice's) with the
   payment's ledger posting and the invoice paid, and hand it to the subscription's
   `Outcomes` (its new state, credits, next job and events) in the same transaction.

A settle job queued with each reservation records an outcome the process died before
recording: it asks the processor by key and never starts a charge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.clock import now
from billfold.errors import ErrorCode
from billfold.invoices import service as invoices
from billfold.invoices.models import Invoice
from billfold.jobs import service as jobs
from billfold.ledger import service as ledger
from billfold.money import micros_to_cents
from billfold.payments import service as payments
from billfold.payments.models import Payment
from billfold.processors.base import Card, ChargeResult, Processor, UnknownPaymentMethod
from billfold.subscriptions.models import Subscription

if TYPE_CHECKING:
    from billfold.services import Services

log = logging.getLogger("billfold.subscriptions")

SETTLE_JOB = "subscriptions.settle_attempt"
SETTLE_DELAY = timedelta(minutes=5)
REVENUE = "revenue:subscriptions"


@dataclass(frozen=True)
class Outcomes:
    """What the subscription makes of its invoice's payment (in the recording txn)."""

    paid: Callable[[Session, Subscription, Invoice], None]
    failed: Callable[[Session, Subscription, Invoice, dict[str, Any], str], None]
    dropped: Callable[[Session, Subscription, Invoice], None]  # never reached the processor


@dataclass(frozen=True)
class Attempt:
    invoice_id: str
    subscription_id: str
    account_id: str
    key: str
    payment_method_id: str
    amount_micros: int
    currency: str


@dataclass(frozen=True)
class Paid:
    """The outcome of paying an invoice: succeeded, and the recorded payment if any."""

    succeeded: bool
    payment: Payment | None
    error: dict[str, Any] | None = None


def lock_subscription(session: Session, subscription_id: str) -> Subscription | None:
    return session.scalars(
        select(Subscription)
        .where(Subscription.id == subscription_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


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


def reserve(session: Session, invoice: Invoice, *, payment_method_id: str, trigger: str) -> Attempt:
    """The attempt in flight on this invoice, or a new one (the caller holds its lock)."""
    if invoice.attempt_key is None:
        invoice.attempt_count += 1
        invoice.attempt_key = f"{invoice.id}:{invoice.attempt_count}"
        invoice.attempt_payment_method_id = payment_method_id
        invoice.meta = {**(invoice.meta or {}), "attempt_trigger": trigger}
        jobs.enqueue(
            session,
            kind=SETTLE_JOB,
            account_id=invoice.account_id,
            payload={"invoice_id": invoice.id, "key": invoice.attempt_key},
            run_at=now() + SETTLE_DELAY,
            dedupe_key=f"settle:{invoice.attempt_key}",
        )
        session.flush()
    assert invoice.subscription_id is not None
    assert invoice.attempt_payment_method_id is not None
    return Attempt(
        invoice_id=invoice.id,
        subscription_id=invoice.subscription_id,
        account_id=invoice.account_id,
        key=invoice.attempt_key,
        payment_method_id=invoice.attempt_payment_method_id,
        amount_micros=invoice.total_micros,
        currency=invoice.currency,
    )


def pay_invoice(
    services: Services,
    invoice_id: str,
    *,
    outcomes: Outcomes,
    trigger: str,
    payment_method_id: str | None = None,
    card: Card | None = None,
) -> Paid:
    """Attempt to pay an open subscription invoice (at most one charge in flight)."""
    database = services.database
    with database.transaction() as session:
        invoice = session.get(Invoice, invoice_id)
        assert invoice is not None and invoice.subscription_id is not None
        sub, invoice = _lock_pair(session, invoice.subscription_id, invoice_id)
        if invoice.status != "open":
            return Paid(invoice.status == "paid", None)
        if invoice.total_micros <= 0:
            invoices.mark_paid(session, invoice, payment_intent_id=None)
            outcomes.paid(session, sub, invoice)
            return Paid(True, None)
        if invoice.attempt_key is None and payment_method_id is None:
            default = payments.default_payment_method(session, invoice.account_id)
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
    try:
        result = charge(services, attempt)
    except UnknownPaymentMethod:
        with database.transaction() as session:
            sub, invoice = _lock_pair(session, attempt.subscription_id, invoice_id)
            if invoice.attempt_key != attempt.key:
                return Paid(invoice.status == "paid", None)
            jobs.cancel(session, dedupe_key=f"settle:{attempt.key}")
            invoice.attempt_key = None
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
    with database.transaction() as session:
        return record_attempt(session, attempt, result, card=card, outcomes=outcomes)


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


def charge(services: Services, attempt: Attempt) -> ChargeResult:
    processor: Processor = services.processor
    customer_id = payments.ensure_customer(services.database, processor, attempt.account_id)
    return processor.charge(
        customer_id=customer_id,
        payment_method_id=attempt.payment_method_id,
        amount_cents=micros_to_cents(attempt.amount_micros),
        currency=attempt.currency,
        idempotency_key=attempt.key,
        description=f"Subscription {attempt.subscription_id}, invoice {attempt.invoice_id}",
    )


def post_payment(session: Session, invoice: Invoice, payment: Payment) -> str:
    """The card money of a subscription payment: clearing → subscription revenue (the
    id of the ledger transaction)."""
    txn = ledger.post(
        session,
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
    return txn.id


def record_attempt(
    session: Session,
    attempt: Attempt,
    result: ChargeResult,
    *,
    card: Card | None,
    outcomes: Outcomes,
) -> Paid:
    """Record one attempt's outcome and its consequences, once."""
    sub, invoice = _lock_pair(session, attempt.subscription_id, attempt.invoice_id)
    payment, first_time = payments.record_payment(
        session,
        account_id=attempt.account_id,
        purpose=invoice.billing_reason or "subscription",
        amount_micros=attempt.amount_micros,
        currency=attempt.currency,
        payment_method_id=attempt.payment_method_id,
        result=result,
    )
    if invoice.attempt_key != attempt.key:
        if first_time and result.succeeded and invoice.payment_intent_id != payment.id:
            # Charged for an invoice that was closed meanwhile: the money is the account's.
            payments.credit_purchase(
                session,
                payment,
                kind="wallet_funding",
                usecase="wallet_funding",
                description="Subscription payment credited to the wallet (invoice closed)",
            )
        return Paid(invoice.status == "paid", payment)  # recorded by someone else
    jobs.cancel(session, dedupe_key=f"settle:{attempt.key}")
    trigger = str((invoice.meta or {}).get("attempt_trigger", "unknown"))
    invoice.attempt_key = None
    if not result.succeeded:
        error = {
            "code": ErrorCode.PAYMENT_DECLINED.value,
            "decline_code": result.decline_code or "generic_decline",
            "message": result.failure_message or "The card was declined.",
            "payment_intent_id": payment.id,
        }
        invoice.last_payment_error = error
        outcomes.failed(session, sub, invoice, error, trigger)
        return Paid(False, payment, error)
    if card is not None:
        payments.save_card(session, account_id=sub.account_id, card=card, make_default=True)
    post_payment(session, invoice, payment)
    invoices.mark_paid(session, invoice, payment_intent_id=payment.id)
    invoice.last_payment_error = None
    outcomes.paid(session, sub, invoice)
    return Paid(True, payment)


def settle_in_flight(services: Services, invoice_id: str, *, outcomes: Outcomes) -> None:
    """Record the outcome of an attempt whose recording was interrupted; an attempt that
    never reached the processor is dropped (nothing was charged)."""
    with services.database.read() as session:
        invoice = session.get(Invoice, invoice_id)
        if invoice is None or invoice.attempt_key is None:
            return
        attempt = Attempt(
            invoice_id=invoice.id,
            subscription_id=invoice.subscription_id or "",
            account_id=invoice.account_id,
            key=invoice.attempt_key,
            payment_method_id=invoice.attempt_payment_method_id or "",
            amount_micros=invoice.total_micros,
            currency=invoice.currency,
        )
    result = services.processor.find_charge(attempt.key)
    with services.database.transaction() as session:
        if result is not None:
            record_attempt(session, attempt, result, card=None, outcomes=outcomes)
            return
        sub, invoice = _lock_pair(session, attempt.subscription_id, invoice_id)
        if invoice.attempt_key != attempt.key:
            return
        invoice.attempt_key = None
        outcomes.dropped(session, sub, invoice)
        log.warning("dropped subscription payment attempt %s: never charged", attempt.key)
