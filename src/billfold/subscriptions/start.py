"""Starting a subscription: the place it takes, the card it is charged to, the first
period's invoice and its payment (or a trial), a start paid through a subscribe payment
link, and the expiry of a start that was never paid.

A start is `incomplete` until its first payment succeeds (`outcomes`), or `trialing`;
23 hours unpaid, it expires (`incomplete_expired`) and gives its place up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billfold.checkout import service as checkout
from billfold.checkout.models import CheckoutSession
from billfold.clock import now
from billfold.errors import Conflict, ErrorCode
from billfold.ids import new_id
from billfold.invoices import service as invoices
from billfold.jobs import service as jobs
from billfold.jobs.service import ClaimedJob
from billfold.payments import recovery
from billfold.payments import service as payments
from billfold.payments.models import Payment
from billfold.processors.base import Card
from billfold.subscriptions import attempts, states
from billfold.subscriptions.engine import (
    grant_period_credits,
    lock,
    lock_invoice,
    open_invoice,
    period_line,
    schedule_renewal,
    void,
)
from billfold.subscriptions.models import Plan, Subscription
from billfold.subscriptions.outcomes import outcomes_for, pay_invoice
from billfold.subscriptions.periods import add_periods
from billfold.subscriptions.plans import SELF_SERVE_KINDS, subscribable_plan
from billfold.subscriptions.states import (
    LIVE_STATUSES,
    BillingReason,
    Event,
    PlanKind,
    SubscriptionStatus,
)
from billfold.subscriptions.views import answer, emit, list_for_account, view

if TYPE_CHECKING:
    from billfold.services import Services

EXPIRE_INCOMPLETE_JOB = "subscriptions.expire_incomplete"
INCOMPLETE_TTL = timedelta(hours=23)


def expire_incomplete(session: Session, sub: Subscription) -> None:
    states.transition(sub, Event.EXPIRE)
    sub.ended_at = now()
    sub.incomplete_expires_at = None
    if sub.open_invoice_id is not None:
        void(session, sub, lock_invoice(session, sub.open_invoice_id))
    emit(session, "updated", sub, change="incomplete_expired")


def check_slot(session: Session, account_id: str, plan: Plan, *, replace_stale: bool) -> None:
    """One live normal subscription per account; addons need an active normal one; the
    same plan once. An incomplete start whose payment failed gives its place up (when
    `replace_stale`; otherwise it does not count). Locks in the engine's order: the
    subscription, then its invoice (the wallet, if at all, last)."""
    live = list_for_account(session, account_id, live_only=True)
    for other in live:
        if not (other.plan_id == plan.id or other.kind == plan.kind == PlanKind.NORMAL):
            continue
        if other.status == SubscriptionStatus.INCOMPLETE:
            if not replace_stale:
                continue
            other = lock(session, other.id)
            if other.status != SubscriptionStatus.INCOMPLETE:
                if other.status not in LIVE_STATUSES:
                    continue  # expired by a concurrent start
            elif (
                other.open_invoice_id is None
                or lock_invoice(session, other.open_invoice_id).attempt_key is None
            ):
                expire_incomplete(session, other)
                continue
        raise Conflict(
            "This account already has a subscription in this place: change its plan "
            "(PUT /subscriptions/{id}) or cancel it first.",
            code=ErrorCode.SUBSCRIPTION_EXISTS,
            details={"subscription_id": other.id, "status": other.status},
        )
    if plan.kind == PlanKind.ADDON and not any(
        s.kind == PlanKind.NORMAL
        and s.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING)
        for s in live
    ):
        raise Conflict(
            "Add-on plans need an active subscription to a normal plan first.",
            code=ErrorCode.ADDON_REQUIRES_SUBSCRIPTION,
            details={"plan_id": plan.id},
        )


def new_subscription(
    session: Session, *, account_id: str, plan: Plan, created_by: str, trial: bool
) -> Subscription:
    """The subscription row in its start status: `trialing`, or `incomplete` until paid."""
    current = now()
    if trial:
        assert plan.trial_days
        end = current + timedelta(days=plan.trial_days)
        anchor, cycle, status = end, -1, SubscriptionStatus.TRIALING
    else:
        end = add_periods(current, plan.period, 1)
        anchor, cycle, status = current, 0, SubscriptionStatus.INCOMPLETE
    assert status in states.START_STATUSES
    sub = Subscription(
        id=new_id("sub"),
        account_id=account_id,
        plan_id=plan.id,
        kind=plan.kind,
        status=status,
        cycle_anchor=anchor,
        cycle_number=cycle,
        current_period_start=current,
        current_period_end=end,
        trial_end=end if trial else None,
        cancel_at_period_end=False,
        created_by=created_by,
        created_at=current,
        updated_at=current,
    )
    # A concurrent start for the same place waits at the partial unique index, then
    # fails here once the first commits. (The savepoint comes first: it flushes.)
    savepoint = session.begin_nested()
    session.add(sub)
    try:
        session.flush()
    except IntegrityError:
        savepoint.rollback()
        raise Conflict(
            "This account already has a subscription in this place.",
            code=ErrorCode.SUBSCRIPTION_EXISTS,
            details={"plan_id": plan.id},
        ) from None
    savepoint.commit()
    return sub


@dataclass(frozen=True)
class CardChoice:
    payment_method_id: str
    card: Card | None  # a card to save once it is charged (not yet on file)


def choose_card(
    services: Services, *, account_id: str, payment_method_id: str | None
) -> CardChoice:
    """The card to charge: the one given (saved or fresh from tokenization) or the default."""
    with services.database.read() as session:
        if payment_method_id is None:
            default = payments.default_payment_method(session, account_id)
            if default is None:
                raise payments.PaymentMethodRequired(
                    "Give a payment_method_id: this account has no default card on file."
                )
            return CardChoice(default.id, None)
        saved = session.get(payments.PaymentMethod, payment_method_id)
        if saved is not None:
            if saved.account_id != account_id:
                raise payments.payment_method_not_found(payment_method_id)
            return CardChoice(saved.id, None)
    customer_id = payments.ensure_customer(services.database, services.processor, account_id)
    card = payments.processor_card(
        services.processor, payment_method_id=payment_method_id, customer_id=customer_id
    )
    return CardChoice(payment_method_id, card)


def start(
    services: Services,
    *,
    account_id: str,
    plan_id: int,
    payment_method_id: str | None,
    created_by: str = "agent",
    kinds: tuple[PlanKind, ...] = SELF_SERVE_KINDS,
) -> dict[str, Any]:
    """Start a subscription charged to a card now (or a trial, with the card saved).

    Declined: 402 whose data is the subscription, `incomplete` (it expires after 23 h;
    fix-payment or a new start with another card completes or replaces it).
    """
    database = services.database
    with database.read() as session:
        plan = subscribable_plan(session, plan_id, kinds=kinds, account_id=account_id)
        trial = bool(plan.trial_days)
    choice = choose_card(services, account_id=account_id, payment_method_id=payment_method_id)
    card = choice.card
    if trial and card is not None:
        customer_id = payments.ensure_customer(database, services.processor, account_id)
        card = payments.attach_card(
            services.processor, payment_method_id=card.id, customer_id=customer_id
        )
    with database.transaction() as session:
        # Concurrent starts meet at the partial unique index (one live normal plan, a
        # plan once): the second waits for the first and answers 409.
        plan = subscribable_plan(session, plan_id, kinds=kinds, account_id=account_id)
        check_slot(session, account_id, plan, replace_stale=True)
        sub = new_subscription(
            session, account_id=account_id, plan=plan, created_by=created_by, trial=trial
        )
        if trial:
            if card is not None:
                payments.save_card(session, account_id=account_id, card=card, make_default=True)
            schedule_renewal(session, sub)
            emit(session, "created", sub)
            return view(session, sub)
        invoice = open_invoice(
            session,
            sub,
            reason=BillingReason.CREATE,
            lines=[period_line(plan, sub.current_period_start, sub.current_period_end)],
            source=f"subscription:{sub.id}:create",
        )
        sub.incomplete_expires_at = now() + INCOMPLETE_TTL
        jobs.enqueue(
            session,
            kind=EXPIRE_INCOMPLETE_JOB,
            account_id=account_id,
            payload={"subscription_id": sub.id},
            run_at=sub.incomplete_expires_at,
        )
        # Reserved with the subscription: until its outcome is recorded, a concurrent
        # start sees a payment in flight and leaves this one alone.
        attempts.reserve(
            session, invoice, payment_method_id=choice.payment_method_id, trigger="create"
        )
        invoice_id, sub_id = invoice.id, sub.id
    paid = pay_invoice(
        services,
        invoice_id,
        trigger="create",
        payment_method_id=choice.payment_method_id,
        card=card,
    )
    return answer(services, paid, account_id=account_id, subscription_id=sub_id)


def run_expire_incomplete(services: Services, job: ClaimedJob) -> None:
    """23 h after a start that was never paid: settle any charge in flight, else expire."""
    sub_id = str(job.payload["subscription_id"])
    with services.database.read() as session:
        sub = session.get(Subscription, sub_id)
        if sub is None or not states.can(sub, Event.EXPIRE) or sub.open_invoice_id is None:
            return
        invoice_id = sub.open_invoice_id
    attempts.settle_in_flight(services, invoice_id, outcomes=outcomes_for(services))
    with services.database.transaction() as session:
        sub = lock(session, sub_id)
        if not states.can(sub, Event.EXPIRE) or sub.open_invoice_id is None:
            return
        if lock_invoice(session, sub.open_invoice_id).attempt_key is not None:
            # A payment started since: look again once it has had time to finish.
            jobs.enqueue(
                session,
                kind=EXPIRE_INCOMPLETE_JOB,
                account_id=sub.account_id,
                payload={"subscription_id": sub.id},
                run_at=now() + attempts.SETTLE_DELAY,
            )
            return
        expire_incomplete(session, sub)


def start_from_checkout(
    session: Session, *, account_id: str, plan_id: int, payment: Payment, session_id: str
) -> str | None:
    """A `subscribe` payment link was paid: the subscription starts, already paid, in the
    transaction that records the payment (the id of its ledger transaction). None if the
    account took this place meanwhile (the caller then credits the money to the wallet)."""
    plan = session.get(Plan, plan_id)
    assert plan is not None
    savepoint = session.begin_nested()
    try:
        check_slot(session, account_id, plan, replace_stale=True)
        sub = new_subscription(
            session, account_id=account_id, plan=plan, created_by="checkout", trial=False
        )
    except Conflict:
        savepoint.rollback()
        return None
    savepoint.commit()
    states.transition(sub, Event.FIRST_PAYMENT_SUCCEEDED)
    invoice = invoices.issue_invoice(
        session,
        account_id=account_id,
        currency=payment.currency,
        lines=[period_line(plan, sub.current_period_start, sub.current_period_end)],
        source=f"payment:{payment.id}",
        status="paid",
        payment_intent_id=payment.id,
        subscription_id=sub.id,
        billing_reason=BillingReason.CREATE.value,
        meta={"checkout_session_id": session_id},
    )
    sub.latest_invoice_id = invoice.id
    txn_id = attempts.post_payment(session, invoice, payment)
    grant_period_credits(session, sub, plan)
    schedule_renewal(session, sub)
    checkout_session = session.get(CheckoutSession, session_id)
    assert checkout_session is not None
    checkout_session.subscription_id = sub.id
    emit(session, "created", sub)
    return txn_id


def payable_plan(session: Session, *, account_id: str, plan_id: int) -> Plan:
    """The checks a subscribe payment link passes when it is handed out and again before
    the human's card is charged (the place is taken for good only when they pay)."""
    plan = subscribable_plan(session, plan_id, kinds=SELF_SERVE_KINDS, account_id=account_id)
    check_slot(session, account_id, plan, replace_stale=False)
    return plan


@recovery.LINK_SUBSCRIPTION_PAID.subscribe
def _on_link_paid(session: Session, event: recovery.ChargeRecorded) -> str | None:
    charge = event.charge
    assert charge.plan_id is not None and charge.checkout_session_id is not None
    return start_from_checkout(
        session,
        account_id=charge.account_id,
        plan_id=charge.plan_id,
        payment=event.payment,
        session_id=charge.checkout_session_id,
    )


@checkout.PLAN_PAYABLE.subscribe
def _check_plan_payable(session: Session, event: checkout.PlanToPay) -> None:
    payable_plan(session, account_id=event.account_id, plan_id=event.plan_id)
