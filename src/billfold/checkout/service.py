"""Payment links: create a checkout session, take the human's payment, report it to the agent.

The wallet is credited in the same transaction that marks the session paid, so a
human's payment is never left uncredited; confirm-checkout then only reports it,
exactly once and the same way every time. A session is claimed ("processing") while a
payment is attempted, so a double-submitted form cannot charge twice.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from billfold.checkout.models import CheckoutSession
from billfold.clock import now, wall_now
from billfold.db import Database
from billfold.errors import BillfoldError, Conflict, ErrorCode, Gone, NotFound
from billfold.events import Topic
from billfold.ids import new_id
from billfold.jobs import service as jobs
from billfold.jobs.service import ClaimedJob
from billfold.ledger.models import LedgerTransaction, Wallet
from billfold.money import micros_to_cents
from billfold.payments import attempts
from billfold.payments import service as payments
from billfold.payments.models import AttemptPurpose, FailureReason, Payment
from billfold.processors.base import (
    Card,
    ChargeResult,
    HostedCheckoutState,
    Processor,
    UnknownPaymentMethod,
)
from billfold.processors.cards import InvalidCard
from billfold.processors.sandbox import SandboxProcessor
from billfold.wallet import funding

if TYPE_CHECKING:
    from billfold.services import Services

PROCESSING_LEASE = timedelta(minutes=2)
EXPIRE_JOB = "checkout.expire"


class CheckoutNotCompleted(BillfoldError):
    code = ErrorCode.CHECKOUT_NOT_COMPLETED


class CheckoutExpired(Gone):
    code = ErrorCode.CHECKOUT_EXPIRED


def create(
    session: Session,
    *,
    account_id: str,
    purpose: str,
    amount_micros: int,
    ttl: timedelta,
    plan_id: int | None = None,
    success_url: str | None = None,
) -> CheckoutSession:
    wallet = session.get(Wallet, account_id)
    if wallet is None:
        raise NotFound("No such account.", code=ErrorCode.ACCOUNT_NOT_FOUND)
    checkout = CheckoutSession(
        id=new_id("cs"),
        account_id=account_id,
        purpose=purpose,
        amount_micros=amount_micros,
        currency=wallet.currency,
        plan_id=plan_id,
        success_url=success_url,
        status="open",
        expires_at=now() + ttl,
        created_at=now(),
    )
    session.add(checkout)
    session.flush()
    jobs.enqueue(
        session,
        kind=EXPIRE_JOB,
        account_id=account_id,
        payload={"session_id": checkout.id},
        run_at=checkout.expires_at,
    )
    return checkout


def effective_status(checkout: CheckoutSession) -> str:
    if checkout.status in ("open", "processing") and checkout.expires_at <= now():
        return "expired"
    return checkout.status


def expire(session: Session, session_id: str) -> None:
    session.execute(
        update(CheckoutSession)
        .where(
            CheckoutSession.id == session_id,
            CheckoutSession.status == "open",
            CheckoutSession.expires_at <= now(),
        )
        .values(status="expired")
    )


def get_for_account(session: Session, *, account_id: str, session_id: str) -> CheckoutSession:
    checkout = session.get(CheckoutSession, session_id)
    if checkout is None or checkout.account_id != account_id:
        raise NotFound(
            "No such checkout session.",
            code=ErrorCode.CHECKOUT_NOT_FOUND,
            details={"session_id": session_id},
        )
    return checkout


def confirm(session: Session, *, account_id: str, session_id: str, purpose: str) -> CheckoutSession:
    """The completed session, or why not yet: 409 until paid, 410 once expired."""
    checkout = get_for_account(session, account_id=account_id, session_id=session_id)
    if checkout.purpose != purpose:
        raise Conflict(
            f"This checkout session is for '{checkout.purpose}', not '{purpose}'.",
            code=ErrorCode.CHECKOUT_PURPOSE_MISMATCH,
        )
    status = effective_status(checkout)
    if status == "complete":
        return checkout
    if status == "expired":
        raise CheckoutExpired(
            "This payment link expired before it was paid. Create a new one.",
            details={"session_id": session_id, "expires_at": checkout.expires_at.isoformat()},
        )
    raise CheckoutNotCompleted(
        "The payment has not been completed yet. Poll again after the human pays.",
        details={"session_id": session_id, "status": status},
    )


def balance_after_credit(session: Session, checkout: CheckoutSession) -> int:
    """The wallet's balance right after a completed `fund` link's credit (so every confirm
    answers the same)."""
    credit = session.scalars(
        select(LedgerTransaction).where(
            LedgerTransaction.account_id == checkout.account_id,
            LedgerTransaction.reference == f"payment:{checkout.payment_intent_id}",
        )
    ).one()
    return credit.balance_after_micros


@dataclass(frozen=True)
class PlanToPay:
    account_id: str
    plan_id: int


@dataclass(frozen=True)
class LinkPaid:
    """A `subscribe` payment link's charge succeeded."""

    account_id: str
    plan_id: int
    session_id: str
    payment: Payment


# A `subscribe` link was paid: the subscriptions domain starts the subscription, in the
# transaction recording the payment (the id of its ledger transaction), or answers None
# if the account took that place meanwhile (the money then funds the wallet).
LINK_SUBSCRIPTION_PAID = Topic[LinkPaid, "str | None"](
    "checkout.link_subscription_paid", single=True
)


# Before the hosted page charges for a `subscribe` link: may this account still start that
# plan? The subscriptions domain answers (raises a BillfoldError if not).
PLAN_PAYABLE = Topic[PlanToPay, None]("checkout.plan_payable", single=True)


@dataclass(frozen=True)
class PayResult:
    """What the hosted page shows after a payment attempt."""

    status: str  # complete, declined, invalid_card, unavailable, busy, expired
    message: str | None = None
    field: str | None = None


def pay_with_card(
    database: Database,
    processor: SandboxProcessor,
    *,
    session_id: str,
    number: str,
    exp_month: str,
    exp_year: str,
    cvc: str,
) -> PayResult:
    """The hosted page's form submit: tokenize, charge and, on success, credit the wallet."""
    try:
        card = processor.tokenize_card(
            number=number, exp_month=exp_month, exp_year=exp_year, cvc=cvc
        )
    except InvalidCard as exc:
        return PayResult("invalid_card", exc.message, exc.param)
    with database.read() as session:
        checkout = session.get(CheckoutSession, session_id)
        plan_id = checkout.plan_id if checkout is not None else None
        account = checkout.account_id if checkout is not None else None
    if plan_id is not None and account is not None:
        try:
            with database.read() as session:
                PLAN_PAYABLE.call(session, PlanToPay(account_id=account, plan_id=plan_id))
        except BillfoldError as exc:
            return PayResult("unavailable", f"{exc.message} Nothing was charged.")
    current = now()
    with database.transaction() as session:
        claimed = session.execute(
            update(CheckoutSession)
            .where(
                CheckoutSession.id == session_id,
                CheckoutSession.expires_at > current,
                or_(
                    CheckoutSession.status == "open",
                    (CheckoutSession.status == "processing")
                    & (CheckoutSession.processing_until < current),
                ),
            )
            .values(
                status="processing",
                processing_until=current + PROCESSING_LEASE,
                attempts=CheckoutSession.attempts + 1,
            )
            .returning(
                CheckoutSession.account_id,
                CheckoutSession.amount_micros,
                CheckoutSession.currency,
                CheckoutSession.attempts,
            )
        ).first()
        if claimed is not None:
            account_id, amount, currency, attempt_number = claimed
            attempt = attempts.begin(
                session,
                purpose=AttemptPurpose.CHECKOUT,
                operation=f"checkout:{session_id}:{attempt_number}",
                account_id=account_id,
                amount_micros=amount,
                currency=currency,
                payment_method_id=card["id"],
                payment_purpose="checkout" if plan_id is None else "subscription_checkout",
                context={
                    "checkout_session_id": session_id,
                    "attempt": attempt_number,
                    "plan_id": plan_id,
                    "save_card": plan_id is not None,
                },
            )
    if claimed is None:
        with database.read() as session:
            checkout = session.get(CheckoutSession, session_id)
            status = effective_status(checkout) if checkout else "expired"
        return PayResult("busy" if status == "processing" else status)

    def card_to_keep(customer_id: str) -> Card | None:
        # A subscription keeps the card for its renewals.
        return processor.retrieve_payment_method(card["id"]) if plan_id is not None else None

    try:
        outcome = attempts.run(
            database,
            processor,
            attempt,
            description=_link_description(plan_id),
            prepare=card_to_keep,
        )
    except Exception:
        _reopen(database, session_id)
        raise
    # The attempt's handlers completed the session, or reopened it.
    if outcome.attempt.failure_reason == FailureReason.CARD_UNAVAILABLE:
        # The processor refused the card it just tokenized: nothing was charged.
        return PayResult("invalid_card", "This card cannot be used. Try another card.")
    if not outcome.succeeded:
        payment = outcome.payment
        return PayResult(
            "declined",
            _decline_message(
                payment.failure_message if payment else None,
                payment.decline_code if payment else None,
            ),
        )
    return PayResult("complete")


def complete_session(session: Session, session_id: str, payment_intent_id: str) -> None:
    """Mark a session paid by this payment, unless another payment completed it first."""
    session.execute(
        update(CheckoutSession)
        .where(
            CheckoutSession.id == session_id,
            CheckoutSession.status.in_(("open", "processing", "expired")),
        )
        .values(
            status="complete",
            payment_intent_id=payment_intent_id,
            completed_at=now(),
            processing_until=None,
        )
    )


def _reopen(database: Database, session_id: str) -> None:
    with database.transaction() as session:
        session.execute(
            update(CheckoutSession)
            .where(CheckoutSession.id == session_id, CheckoutSession.status == "processing")
            .values(status="open", processing_until=None)
        )


def _decline_message(message: str | None, decline_code: str | None) -> str:
    reason = (decline_code or "declined").replace("_", " ")
    text = (message or "Your card was declined.").rstrip(".")
    return f"{text} ({reason}). Try another card."


def run_expiry(services: Services, job: ClaimedJob) -> None:
    """The job scheduled at a link's expiry: an unpaid session becomes expired (a link paid
    on the processor's page, whose news has not come, is recorded first)."""
    session_id = str(job.payload["session_id"])
    sync_hosted(services.database, services.processor, session_id=session_id)
    with services.database.transaction() as session:
        expire(session, session_id)


# --- links paid on the processor's own page (Stripe Checkout) -------------------------


def hosted_checkout_url(
    database: Database, processor: Processor, *, session_id: str, base_url: str
) -> str | None:
    """Where a human pays an open link on a processor that hosts the payment page: its
    checkout, made on the first visit (once, under a key derived from the link) and sent
    back to Billfold's page for the link (`base_url`/pay/<id>). None: Billfold's own page
    takes the card (sandbox), or the link is not open."""
    if not processor.hosts_checkout:
        return None
    with database.read() as session:
        checkout = session.get(CheckoutSession, session_id)
        if checkout is None or effective_status(checkout) != "open":
            return None
        if checkout.processor_checkout_url is not None:
            return checkout.processor_checkout_url
        account_id, plan_id = checkout.account_id, checkout.plan_id
        amount, currency = checkout.amount_micros, checkout.currency
        expires_in = checkout.expires_at - now()
    customer_id = payments.ensure_customer(database, processor, account_id)
    page = f"{base_url.rstrip('/')}/pay/{session_id}"
    hosted = processor.create_hosted_checkout(
        customer_id=customer_id,
        amount_cents=micros_to_cents(amount),
        currency=currency,
        description=_link_description(plan_id),
        success_url=page,
        cancel_url=page,
        expires_at=wall_now() + expires_in,
        idempotency_key=f"checkout:{session_id}",
        charge_key=hosted_operation(session_id),
        metadata={"billfold_session_id": session_id, "billfold_account_id": account_id},
    )
    if hosted is None:
        return None
    with database.transaction() as session:
        session.execute(
            update(CheckoutSession)
            .where(
                CheckoutSession.id == session_id,
                CheckoutSession.processor_checkout_id.is_(None),
            )
            .values(processor_checkout_id=hosted.id, processor_checkout_url=hosted.url)
        )
        stored = session.get(CheckoutSession, session_id, populate_existing=True)
        assert stored is not None
        return stored.processor_checkout_url


def sync_hosted(
    database: Database,
    processor: Processor,
    *,
    session_id: str | None = None,
    processor_checkout_id: str | None = None,
    account_id: str | None = None,
) -> None:
    """Record a link paid on the processor's page, if the processor says it was paid
    (asked when the human comes back, when the agent confirms, by the processor's
    webhook and at expiry). Only `account_id`'s link, when given; nothing for a link the
    processor does not host, or one already complete."""
    if not processor.hosts_checkout:
        return
    with database.read() as session:
        if session_id is not None:
            checkout = session.get(CheckoutSession, session_id)
        else:
            checkout = session.scalars(
                select(CheckoutSession).where(
                    CheckoutSession.processor_checkout_id == processor_checkout_id
                )
            ).first()
        if (
            checkout is None
            or checkout.processor_checkout_id is None
            or checkout.status == "complete"
            or (account_id is not None and checkout.account_id != account_id)
        ):
            return
        hosted_id, link_id = checkout.processor_checkout_id, checkout.id
    state = processor.retrieve_hosted_checkout(hosted_id)
    if state.paid and state.payment_intent_id is not None:
        _record_hosted_payment(database, processor, link_id, state)


def _record_hosted_payment(
    database: Database, processor: Processor, session_id: str, state: HostedCheckoutState
) -> None:
    """The payment attempt of a link paid on the processor's page, recorded as succeeded
    once, whoever records it first (webhook, confirm, the human's return): they all meet
    at the same attempt, and only one conditional UPDATE moves it."""
    assert state.payment_intent_id is not None
    with database.transaction() as session:
        checkout = session.get(CheckoutSession, session_id)
        assert checkout is not None
        attempt = attempts.begin(
            session,
            purpose=AttemptPurpose.CHECKOUT,
            operation=hosted_operation(session_id),
            account_id=checkout.account_id,
            amount_micros=checkout.amount_micros,
            currency=checkout.currency,
            payment_method_id=state.payment_method_id or "",
            payment_purpose="checkout" if checkout.plan_id is None else "subscription_checkout",
            context={
                "checkout_session_id": session_id,
                "attempt": 0,
                "plan_id": checkout.plan_id,
                "save_card": True,  # saved for renewals and auto-funding
            },
        )
    if attempt.state.settled:
        return
    card: Card | None = None
    if state.payment_method_id:
        with suppress(UnknownPaymentMethod):
            card = processor.retrieve_payment_method(state.payment_method_id)
    with database.transaction() as session:
        attempts.record(
            session,
            attempt,
            ChargeResult(payment_intent_id=state.payment_intent_id, status="succeeded"),
            card=card,
        )


def hosted_operation(session_id: str) -> str:
    """The payment-attempt operation of a link paid on the processor's page (its first
    attempt's key, which the processor's payment carries, so the janitor finds it)."""
    return f"checkout:{session_id}:hosted"


def _link_description(plan_id: int | None) -> str:
    if plan_id is None:
        return "Wallet funding (payment link)"
    return f"Subscription to plan {plan_id} (payment link)"


@attempts.on_success(AttemptPurpose.CHECKOUT).subscribe
def _on_link_paid(session: Session, event: attempts.Settled) -> str | None:
    """The human's payment: a `subscribe` link starts its subscription; otherwise (or if
    the account took that place meanwhile) the money funds the wallet. Money the human
    paid is always credited, even if another attempt completed the session meanwhile
    (after a lapsed processing lease). The id of the ledger transaction."""
    payment = event.payment
    assert payment is not None
    context = event.attempt.context
    session_id = str(context["checkout_session_id"])
    plan_id = context.get("plan_id")
    if plan_id is not None:
        started = LINK_SUBSCRIPTION_PAID.call(
            session, LinkPaid(payment.account_id, int(plan_id), session_id, payment)
        )
        if started is not None:
            if event.card is not None:  # renewals charge the card the human subscribed with
                payments.save_card(
                    session, account_id=payment.account_id, card=event.card, make_default=True
                )
            complete_session(session, session_id, payment.id)
            return started
        # The account took this subscription's place meanwhile: the money is credited,
        # as a payment-link funding (purchased credit, refundable to the card).
        payment.purpose = "checkout"
    transaction_id = funding.credit_card_funding(session, event, meta={"session_id": session_id})
    complete_session(session, session_id, payment.id)
    return transaction_id


@attempts.on_failure(AttemptPurpose.CHECKOUT).subscribe
def _on_link_payment_failed(session: Session, event: attempts.Settled) -> None:
    """Declined, or never charged: the session takes another card, unless a newer attempt
    holds it."""
    context = event.attempt.context
    session.execute(
        update(CheckoutSession)
        .where(
            CheckoutSession.id == str(context["checkout_session_id"]),
            CheckoutSession.status == "processing",
            CheckoutSession.attempts == int(context["attempt"]),
        )
        .values(status="open", processing_until=None)
    )
