"""Subscription state: start, renew, change, pause, resume, reset and cancel.

Billfold owns this engine; the processor only moves card money. Each change that bills
(a start, a new period, an upgrade, a reset) finalizes its invoice in the transaction
that makes the change, then pays it through `attempts` (one processor charge per
attempt, whatever runs twice); what the payment means for the subscription is decided
here, in `_on_paid` / `_on_failed`, within the transaction that records it. Failed
renewals go to `dunning`. Included credits are `credits`' business.

Time comes from `billfold.clock`; renewals, dunning retries and expiries are jobs at
their due time, so the sandbox test clock can drive a subscription through a year.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billfold.checkout import service as checkout
from billfold.checkout.models import CheckoutSession
from billfold.clock import as_utc, now
from billfold.errors import Conflict, ErrorCode, NotFound, PaymentFailed
from billfold.ids import new_id
from billfold.invoices import service as invoices
from billfold.invoices.models import Invoice
from billfold.jobs import service as jobs
from billfold.jobs.service import ClaimedJob
from billfold.ledger import service as ledger
from billfold.ledger.models import Wallet
from billfold.money import ceil_to_cent, floor_to_cent, from_micros, round_to_cent
from billfold.payments import service as payments
from billfold.payments.models import Payment
from billfold.processors.base import Card
from billfold.subscriptions import attempts, credits, dunning
from billfold.subscriptions.attempts import Paid
from billfold.subscriptions.models import LIVE_STATUSES, Plan, Subscription
from billfold.subscriptions.periods import add_periods, prorate
from billfold.subscriptions.plans import SELF_SERVE_KINDS, plan_view, subscribable_plan
from billfold.webhooks import service as webhooks

if TYPE_CHECKING:
    from billfold.services import Services

log = logging.getLogger("billfold.subscriptions")

RENEW_JOB = "subscriptions.renew"
EXPIRE_INCOMPLETE_JOB = "subscriptions.expire_incomplete"

INCOMPLETE_TTL = timedelta(hours=23)
# Card payments for subscriptions, by Stripe's billing_reason.
PAYMENT_PURPOSES = (
    "subscription_create",
    "subscription_cycle",
    "subscription_update",
    "subscription_reset",
)


# --- errors -------------------------------------------------------------------------


def subscription_not_found(subscription_id: str) -> NotFound:
    return NotFound(
        "No such subscription.",
        code=ErrorCode.SUBSCRIPTION_NOT_FOUND,
        details={"subscription_id": subscription_id},
    )


def _state_conflict(sub: Subscription, action: str, code: ErrorCode) -> Conflict:
    return Conflict(
        f"Cannot {action} a subscription that is {sub.status}.",
        code=code,
        details={"subscription_id": sub.id, "status": sub.status},
    )


def _payment_pending(sub: Subscription) -> Conflict:
    return Conflict(
        "A payment for this subscription is in progress; try again shortly.",
        code=ErrorCode.SUBSCRIPTION_PAYMENT_PENDING,
        details={"subscription_id": sub.id, "invoice_id": sub.open_invoice_id},
    )


# --- reading ------------------------------------------------------------------------


def get_for_account(session: Session, *, account_id: str, subscription_id: str) -> Subscription:
    sub = session.get(Subscription, subscription_id)
    if sub is None or sub.account_id != account_id:
        raise subscription_not_found(subscription_id)
    return sub


def _lock(session: Session, subscription_id: str, account_id: str | None = None) -> Subscription:
    sub = attempts.lock_subscription(session, subscription_id)
    if sub is None or (account_id is not None and sub.account_id != account_id):
        raise subscription_not_found(subscription_id)
    return sub


_lock_invoice = attempts.lock_invoice


def list_for_account(session: Session, account_id: str, *, live_only: bool) -> list[Subscription]:
    query = select(Subscription).where(Subscription.account_id == account_id)
    if live_only:
        query = query.where(Subscription.status.in_(LIVE_STATUSES))
    return list(session.scalars(query.order_by(Subscription.created_at.desc(), Subscription.id)))


def _payment_status(invoice: Invoice | None) -> str | None:
    if invoice is None:
        return None
    if invoice.status == "paid":
        return "paid"
    if invoice.status == "open":
        if invoice.attempt_key:
            return "processing"
        return "failed" if invoice.last_payment_error else "pending"
    return invoice.status  # void, uncollectible


def view(session: Session, sub: Subscription) -> dict[str, Any]:
    """Everything an agent asks about a subscription."""
    plan = session.get(Plan, sub.plan_id)
    assert plan is not None
    scheduled = session.get(Plan, sub.scheduled_plan_id) if sub.scheduled_plan_id else None
    invoice = session.get(Invoice, sub.latest_invoice_id) if sub.latest_invoice_id else None
    latest = None
    if invoice is not None:
        latest = {
            "id": invoice.id,
            "number": invoice.number,
            "status": invoice.status,
            "billing_reason": invoice.billing_reason,
            "total": from_micros(invoice.total_micros),
            "amount_paid": from_micros(invoice.amount_paid_micros),
            "attempt_count": invoice.attempt_count,
            "next_payment_attempt": invoice.next_payment_attempt,
            "last_payment_error": invoice.last_payment_error,
            "payment_intent_id": invoice.payment_intent_id,
        }
    return {
        "id": sub.id,
        "object": "subscription",
        "status": sub.status,
        "kind": sub.kind,
        "plan_id": sub.plan_id,
        "plan": plan_view(plan),
        "current_period_start": sub.current_period_start,
        "current_period_end": sub.current_period_end,
        "cancel_at_period_end": sub.cancel_at_period_end,
        "canceled_at": sub.canceled_at,
        "ended_at": sub.ended_at,
        "paused_at": sub.paused_at,
        "trial_end": sub.trial_end,
        "scheduled_change": (
            {
                "plan_id": scheduled.id,
                "plan_name": scheduled.name,
                "effective_at": sub.current_period_end,
            }
            if scheduled is not None
            else None
        ),
        "latest_invoice": latest,
        "payment_status": _payment_status(invoice),
        "next_retry_at": invoice.next_payment_attempt if invoice is not None else None,
        "incomplete_expires_at": sub.incomplete_expires_at if sub.status == "incomplete" else None,
        "created_at": sub.created_at,
    }


def _emit(session: Session, type: str, sub: Subscription, **extra: Any) -> None:
    def data() -> dict[str, Any]:
        session.flush()
        return {**view(session, sub), **extra}

    webhooks.emit(session, type=f"subscription.{type}", account_id=sub.account_id, data=data)


# --- periods, invoices and credits --------------------------------------------------


def _period_line(plan: Plan, start: datetime, end: datetime) -> invoices.Line:
    return invoices.Line(
        "subscription",
        f"{plan.name} ({start:%Y-%m-%d} to {end:%Y-%m-%d})",
        plan.price_micros,
        (start, end),
    )


def _open_invoice(
    session: Session,
    sub: Subscription,
    *,
    reason: str,
    lines: list[invoices.Line],
    source: str,
    meta: dict[str, Any] | None = None,
) -> Invoice:
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
        billing_reason=reason,
        meta=meta,
    )
    sub.open_invoice_id = invoice.id
    sub.latest_invoice_id = invoice.id
    return invoice


def _grant_period_credits(session: Session, sub: Subscription, plan: Plan, less: int = 0) -> None:
    if plan.included_credits_micros:
        credits.grant(
            session,
            sub,
            amount_micros=plan.included_credits_micros - less,
            expires_at=sub.current_period_end,
            description=f"Included credits: {plan.name}, until {sub.current_period_end:%Y-%m-%d}"
            + (f" (less {from_micros(less)} used ahead in the previous period)" if less else ""),
        )


def _schedule_renewal(session: Session, sub: Subscription) -> None:
    jobs.enqueue(
        session,
        kind=RENEW_JOB,
        account_id=sub.account_id,
        payload={"subscription_id": sub.id, "period_end": sub.current_period_end.isoformat()},
        run_at=sub.current_period_end,
        dedupe_key=f"renew:{sub.id}:{sub.current_period_end.isoformat()}",
    )


def _on_paid(session: Session, sub: Subscription, invoice: Invoice) -> None:
    """What a paid invoice completes, by its billing reason."""
    if sub.open_invoice_id == invoice.id:
        sub.open_invoice_id = None
    sub.updated_at = now()
    meta = invoice.meta or {}
    reason = invoice.billing_reason
    plan = session.get(Plan, sub.plan_id)
    assert plan is not None
    if reason == "subscription_create":
        if sub.status == "incomplete":
            sub.status = "active"
            sub.incomplete_expires_at = None
            _grant_period_credits(session, sub, plan)
            _schedule_renewal(session, sub)
            _emit(session, "created", sub)
    elif reason == "subscription_cycle":
        was = sub.status
        if was in ("active", "trialing", "past_due", "unpaid"):
            sub.status = "active"
            _grant_period_credits(session, sub, plan)
            _schedule_renewal(session, sub)
            _emit(session, "renewed", sub, recovered_from=was if was != "active" else None)
    elif reason == "subscription_update":
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
        _emit(session, "updated", sub, previous_plan_id=old_plan_id, change="upgrade")
    elif reason == "subscription_reset":
        # Credits spent ahead of time since the invoice was made, which its deduction
        # could still have covered, come off the new period's grant.
        _, spent = credits.spent_of_live_grants(session, sub)
        deductible = int(meta.get("unused_time_micros", 0))
        ahead = min(deductible, max(0, spent - int(meta.get("credits_allowance_micros", 0))))
        owed = max(0, ceil_to_cent(ahead) - int(meta.get("credits_deducted_micros", 0)))
        credits.expire_subscription_grants_now(session, sub)
        start = datetime.fromisoformat(meta["period_start"])
        end = datetime.fromisoformat(meta["period_end"])
        sub.cycle_anchor = start
        sub.cycle_number = 0
        sub.current_period_start = start
        sub.current_period_end = end
        _grant_period_credits(session, sub, plan, less=owed)
        _schedule_renewal(session, sub)
        _emit(session, "updated", sub, change="reset_cycle")


def _on_failed(
    session: Session, sub: Subscription, invoice: Invoice, error: dict[str, Any], trigger: str
) -> None:
    """What a failed attempt means, by billing reason and by what triggered it."""
    sub.updated_at = now()
    reason = invoice.billing_reason
    if reason in ("subscription_update", "subscription_reset"):
        _void(session, sub, invoice)
    elif reason == "subscription_cycle" and sub.status in ("active", "trialing"):
        sub.status = "past_due"
        _emit(session, "past_due", sub)
    _emit(session, "payment_failed", sub, error=error)
    step = dunning.step_after(trigger) if reason == "subscription_cycle" else None
    if step is None or dunning.schedule_retry(session, invoice, step=step):
        return
    if dunning.policy().final_status == "unpaid":
        sub.status = "unpaid"
        _emit(session, "updated", sub, change="unpaid")
        return
    _void(session, sub, invoice)
    _end(session, sub, reason="payment_failed")


def _on_dropped(session: Session, sub: Subscription, invoice: Invoice) -> None:
    """An attempt that never reached the processor: a change it would have paid for is
    given up; a start or a renewal stays open for its next attempt."""
    if invoice.billing_reason in ("subscription_update", "subscription_reset"):
        _void(session, sub, invoice)


def _void(session: Session, sub: Subscription, invoice: Invoice) -> None:
    """An open invoice of the subscription that will not be paid."""
    invoices.close_unpaid(session, invoice, status="void")
    if sub.open_invoice_id == invoice.id:
        sub.open_invoice_id = None


OUTCOMES = attempts.Outcomes(paid=_on_paid, failed=_on_failed, dropped=_on_dropped)
attempts.register(OUTCOMES)


def pay_invoice(
    services: Services,
    invoice_id: str,
    *,
    trigger: str,
    payment_method_id: str | None = None,
    card: Card | None = None,
) -> Paid:
    return attempts.pay_invoice(
        services,
        invoice_id,
        outcomes=OUTCOMES,
        trigger=trigger,
        payment_method_id=payment_method_id,
        card=card,
    )


def run_retry(services: Services, job: ClaimedJob) -> None:
    """A dunning retry fell due: pay the renewal invoice if it is still owed."""
    invoice_id = str(job.payload["invoice_id"])
    with services.database.read() as session:
        invoice = session.get(Invoice, invoice_id)
        if invoice is None or invoice.status != "open" or invoice.subscription_id is None:
            return
        sub = session.get(Subscription, invoice.subscription_id)
        if sub is None or sub.status != "past_due":
            return
    pay_invoice(services, invoice_id, trigger=f"retry:{int(job.payload['step'])}")


def run_settle(services: Services, job: ClaimedJob) -> None:
    """An attempt's settle job: record what the processor did, if nobody has."""
    invoice_id = str(job.payload["invoice_id"])
    with services.database.read() as session:
        invoice = session.get(Invoice, invoice_id)
        if invoice is None or invoice.attempt_key != job.payload["key"]:
            return
    attempts.settle_in_flight(services, invoice_id, outcomes=OUTCOMES)


# --- ending -------------------------------------------------------------------------


def _end(session: Session, sub: Subscription, *, reason: str) -> None:
    current = now()
    sub.status = "canceled"
    sub.ended_at = current
    sub.canceled_at = sub.canceled_at or current
    sub.scheduled_plan_id = None
    credits.expire_subscription_grants_now(session, sub)
    _emit(session, "canceled", sub, reason=reason)


def cancel(
    session: Session, *, account_id: str, subscription_id: str, at_period_end: bool
) -> Subscription:
    """At period end: renewals stop then. Now: ends it, credits the unused part of a paid
    period to the wallet (purchased credit) and ends the period's included credits."""
    sub = _lock(session, subscription_id, account_id)
    if sub.status in ("canceled", "incomplete_expired"):
        raise _state_conflict(sub, "cancel", ErrorCode.SUBSCRIPTION_NOT_ACTIVE)
    if at_period_end:
        if sub.status not in ("active", "trialing", "paused"):
            raise _state_conflict(
                sub, "schedule the cancellation of", ErrorCode.SUBSCRIPTION_NOT_ACTIVE
            )
        sub.cancel_at_period_end = True
        sub.canceled_at = now()
        sub.updated_at = now()
        _emit(session, "updated", sub, change="cancel_at_period_end")
        return sub
    if sub.open_invoice_id is not None:
        invoice = _lock_invoice(session, sub.open_invoice_id)
        if invoice.attempt_key is not None:
            raise _payment_pending(sub)
        _void(session, sub, invoice)
    if sub.status in ("active", "paused"):
        invoices.lock_series(session, "credit_note")  # the series before the wallet
        plan = session.get(Plan, sub.plan_id)
        assert plan is not None
        unused = unused_time(session, sub, plan, at=as_utc(sub.paused_at or now()))
        if unused.value_micros > 0:
            _credit_unused_time(session, sub, unused)
    _end(session, sub, reason="canceled_by_customer")
    return sub


@dataclass(frozen=True)
class UnusedTime:
    """What the rest of a paid period is worth when its included credits end early.

    The time's price share, less the included credits spent ahead of time: a period's
    credits are earned evenly over it, so credits spent beyond the elapsed share were
    paid for by the rest of the period and are not returned twice. value = time -
    credits_ahead, floored at zero; amounts returned round down to the cent.
    """

    time_micros: int  # price x remaining share, rounded down to the cent
    credits_ahead_micros: int  # included credits spent beyond the elapsed share
    allowance_micros: int  # included credits the elapsed share earned

    @property
    def deduction_micros(self) -> int:
        """The credits-ahead line of an invoice: whole cents, never beyond the time."""
        return min(self.time_micros, ceil_to_cent(self.credits_ahead_micros))

    @property
    def value_micros(self) -> int:
        return self.time_micros - self.deduction_micros

    def lines(self, plan: Plan, at: datetime, end: datetime) -> list[invoices.Line]:
        lines = []
        if self.time_micros:
            lines.append(
                invoices.Line(
                    "proration",
                    f"Unused time on {plan.name} after {at:%Y-%m-%d %H:%M:%S} UTC",
                    -self.time_micros,
                    (at, end),
                )
            )
        if self.deduction_micros:
            lines.append(
                invoices.Line(
                    "proration",
                    "Included credits already used beyond the elapsed time",
                    self.deduction_micros,
                    (at, end),
                )
            )
        return lines


def unused_time(session: Session, sub: Subscription, plan: Plan, *, at: datetime) -> UnusedTime:
    """The unused part of the current period at `at` (locks the wallet: take the number
    series first)."""
    start, end = as_utc(sub.current_period_start), as_utc(sub.current_period_end)
    granted, spent = credits.spent_of_live_grants(session, sub)
    current = plan.included_credits_micros or 0
    total = max(1, int((end - start).total_seconds()))
    elapsed = max(0, min(total, int((at - start).total_seconds())))
    # Credits of the remaining time, rounded up: the allowance rounds in the house's favour.
    remaining_share = current - current * elapsed // total
    allowance = max(0, granted - remaining_share)
    return UnusedTime(
        time_micros=floor_to_cent(prorate(plan.price_micros, start=start, end=end, at=at)),
        credits_ahead_micros=max(0, spent - allowance),
        allowance_micros=allowance,
    )


def _credit_unused_time(session: Session, sub: Subscription, unused: UnusedTime) -> None:
    """The unused time's value, credited to the wallet with a credit note against the
    invoice that paid the period. It is account credit, not cash: it lands as
    promotional credit (spendable, never withdrawable), as Stripe keeps it as customer
    balance; no card payment stands behind it to refund."""
    amount = unused.value_micros
    latest = session.get(Invoice, sub.latest_invoice_id) if sub.latest_invoice_id else None
    if latest is not None and latest.status == "paid":
        at = now()
        plan = session.get(Plan, sub.plan_id)
        assert plan is not None
        invoices.issue_credit_note(
            session,
            original=latest,
            lines=unused.lines(plan, at, as_utc(sub.current_period_end)),
            source=f"unused:{sub.id}",
        )
    ledger.post(
        session,
        account_id=sub.account_id,
        kind="subscription_unused_time",
        usecase="subscription",
        description="Unused subscription time credited on cancellation",
        reference=f"unused:{sub.id}",
        postings=[
            ledger.Posting(ledger.wallet_account("promotional"), amount),
            ledger.Posting(attempts.REVENUE, -amount),
        ],
        meta={
            "subscription_id": sub.id,
            "unused_time": str(from_micros(unused.time_micros)),
            "credits_used_ahead": str(from_micros(unused.deduction_micros)),
        },
    )


# --- starting -----------------------------------------------------------------------


def _expire_incomplete(session: Session, sub: Subscription) -> None:
    sub.status = "incomplete_expired"
    sub.ended_at = now()
    sub.incomplete_expires_at = None
    if sub.open_invoice_id is not None:
        _void(session, sub, _lock_invoice(session, sub.open_invoice_id))
    _emit(session, "updated", sub, change="incomplete_expired")


def check_slot(session: Session, account_id: str, plan: Plan, *, replace_stale: bool) -> None:
    """One live normal subscription per account; addons need an active normal one; the
    same plan once. An incomplete start whose payment failed gives its place up (when
    `replace_stale`; otherwise it does not count). Locks in the engine's order: the
    subscription, then its invoice (the wallet, if at all, last)."""
    live = list_for_account(session, account_id, live_only=True)
    for other in live:
        if not (other.plan_id == plan.id or other.kind == plan.kind == "normal"):
            continue
        if other.status == "incomplete":
            if not replace_stale:
                continue
            other = _lock(session, other.id)
            if other.status != "incomplete":
                if other.status not in LIVE_STATUSES:
                    continue  # expired by a concurrent start
            elif (
                other.open_invoice_id is None
                or _lock_invoice(session, other.open_invoice_id).attempt_key is None
            ):
                _expire_incomplete(session, other)
                continue
        raise Conflict(
            "This account already has a subscription in this place: change its plan "
            "(PUT /subscriptions/{id}) or cancel it first.",
            code=ErrorCode.SUBSCRIPTION_EXISTS,
            details={"subscription_id": other.id, "status": other.status},
        )
    if plan.kind == "addon" and not any(
        s.kind == "normal" and s.status in ("active", "trialing") for s in live
    ):
        raise Conflict(
            "Add-on plans need an active subscription to a normal plan first.",
            code=ErrorCode.ADDON_REQUIRES_SUBSCRIPTION,
            details={"plan_id": plan.id},
        )


def _new_subscription(
    session: Session, *, account_id: str, plan: Plan, created_by: str, trial: bool
) -> Subscription:
    current = now()
    if trial:
        assert plan.trial_days
        end = current + timedelta(days=plan.trial_days)
        anchor, cycle, status = end, -1, "trialing"
    else:
        end = add_periods(current, plan.period, 1)
        anchor, cycle, status = current, 0, "incomplete"
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
    kinds: tuple[str, ...] = SELF_SERVE_KINDS,
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
        sub = _new_subscription(
            session, account_id=account_id, plan=plan, created_by=created_by, trial=trial
        )
        if trial:
            if card is not None:
                payments.save_card(session, account_id=account_id, card=card, make_default=True)
            _schedule_renewal(session, sub)
            _emit(session, "created", sub)
            return view(session, sub)
        invoice = _open_invoice(
            session,
            sub,
            reason="subscription_create",
            lines=[_period_line(plan, sub.current_period_start, sub.current_period_end)],
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
    return _answer(services, paid, account_id=account_id, subscription_id=sub_id)


def _answer(
    services: Services, paid: Paid, *, account_id: str, subscription_id: str
) -> dict[str, Any]:
    """The subscription after a payment attempt, or the 402 that carries it."""
    with services.database.read() as session:
        sub = get_for_account(session, account_id=account_id, subscription_id=subscription_id)
        data = view(session, sub)
    if not paid.succeeded:
        raise _declined(data, paid)
    return data


def _declined(data: dict[str, Any], paid: Paid) -> PaymentFailed:
    error = paid.error or {}
    return PaymentFailed(
        str(error.get("message") or "The card was declined."),
        decline_code=str(error.get("decline_code") or "generic_decline"),
        payment={
            **data,
            "payment": payments.payment_view(paid.payment) if paid.payment else None,
        },
    )


def run_expire_incomplete(services: Services, job: ClaimedJob) -> None:
    """23 h after a start that was never paid: settle any charge in flight, else expire."""
    sub_id = str(job.payload["subscription_id"])
    with services.database.read() as session:
        sub = session.get(Subscription, sub_id)
        if sub is None or sub.status != "incomplete" or sub.open_invoice_id is None:
            return
        invoice_id = sub.open_invoice_id
    attempts.settle_in_flight(services, invoice_id, outcomes=OUTCOMES)
    with services.database.transaction() as session:
        sub = _lock(session, sub_id)
        if sub.status != "incomplete" or sub.open_invoice_id is None:
            return
        if _lock_invoice(session, sub.open_invoice_id).attempt_key is not None:
            # A payment started since: look again once it has had time to finish.
            jobs.enqueue(
                session,
                kind=EXPIRE_INCOMPLETE_JOB,
                account_id=sub.account_id,
                payload={"subscription_id": sub.id},
                run_at=now() + attempts.SETTLE_DELAY,
            )
            return
        _expire_incomplete(session, sub)


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
        sub = _new_subscription(
            session, account_id=account_id, plan=plan, created_by="checkout", trial=False
        )
    except Conflict:
        savepoint.rollback()
        return None
    savepoint.commit()
    sub.status = "active"
    invoice = invoices.issue_invoice(
        session,
        account_id=account_id,
        currency=payment.currency,
        lines=[_period_line(plan, sub.current_period_start, sub.current_period_end)],
        source=f"payment:{payment.id}",
        status="paid",
        payment_intent_id=payment.id,
        subscription_id=sub.id,
        billing_reason="subscription_create",
        meta={"checkout_session_id": session_id},
    )
    sub.latest_invoice_id = invoice.id
    txn_id = attempts.post_payment(session, invoice, payment)
    _grant_period_credits(session, sub, plan)
    _schedule_renewal(session, sub)
    checkout = session.get(CheckoutSession, session_id)
    assert checkout is not None
    checkout.subscription_id = sub.id
    _emit(session, "created", sub)
    return txn_id


# --- renewal ------------------------------------------------------------------------


def run_renewal(services: Services, job: ClaimedJob) -> None:
    """At a period's end: end it (cancel_at_period_end), or open the next period's invoice
    and charge it. Safe to run twice: the second run finds the period already rolled and
    joins the same payment attempt."""
    sub_id = str(job.payload["subscription_id"])
    period_end = datetime.fromisoformat(str(job.payload["period_end"]))
    with services.database.transaction() as session:
        sub = _lock(session, sub_id)
        invoice_id = _roll_period(session, sub, period_end)
    if invoice_id is not None:
        pay_invoice(services, invoice_id, trigger="renewal")


def _roll_period(session: Session, sub: Subscription, period_end: datetime) -> str | None:
    """The invoice to pay for the period after `period_end`, rolling into it if due."""
    if sub.open_invoice_id is not None:
        invoice = _lock_invoice(session, sub.open_invoice_id)
        if (
            invoice.billing_reason == "subscription_cycle"
            and (invoice.meta or {}).get("period_start") == period_end.isoformat()
            and (invoice.attempt_count == 0 or invoice.attempt_key is not None)
        ):
            return invoice.id  # rolled already; its first charge never finished
        return None
    if sub.status not in ("active", "trialing"):
        return None  # paused (resume reschedules), past_due, canceled …
    if as_utc(sub.current_period_end) != period_end or now() < period_end:
        return None
    if sub.cancel_at_period_end:
        _end(session, sub, reason="canceled_at_period_end")
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
    invoice = _open_invoice(
        session,
        sub,
        reason="subscription_cycle",
        lines=[_period_line(plan, sub.current_period_start, sub.current_period_end)],
        source=f"subscription:{sub.id}:cycle:{period_end.isoformat()}",
        meta={"period_start": period_end.isoformat()},
    )
    return invoice.id


# --- changes by the account ---------------------------------------------------------


def fix_payment(services: Services, *, account_id: str, subscription_id: str) -> dict[str, Any]:
    """Retry the open invoice now with the current default card."""
    with services.database.read() as session:
        sub = get_for_account(session, account_id=account_id, subscription_id=subscription_id)
        if sub.status not in ("past_due", "incomplete", "unpaid") or sub.open_invoice_id is None:
            raise Conflict(
                "This subscription has no failed payment to fix.",
                code=ErrorCode.NOTHING_TO_FIX,
                details={"subscription_id": sub.id, "status": sub.status},
            )
        invoice_id = sub.open_invoice_id
        default = payments.default_payment_method(session, account_id)
        if default is None:
            raise payments.PaymentMethodRequired(
                "Add a card first (POST /billing/payment-methods): there is no default card."
            )
    paid = pay_invoice(services, invoice_id, trigger="fix", payment_method_id=default.id)
    return _answer(services, paid, account_id=account_id, subscription_id=subscription_id)


def pause(session: Session, *, account_id: str, subscription_id: str) -> Subscription:
    """No renewals and no credit expiry while paused; the remaining time is frozen."""
    sub = _lock(session, subscription_id, account_id)
    if sub.status == "paused":
        raise _state_conflict(sub, "pause", ErrorCode.SUBSCRIPTION_ALREADY_PAUSED)
    if sub.status != "active":
        raise _state_conflict(sub, "pause", ErrorCode.SUBSCRIPTION_NOT_ACTIVE)
    if sub.open_invoice_id is not None:
        raise _payment_pending(sub)
    sub.status = "paused"
    sub.paused_at = now()
    sub.updated_at = now()
    _emit(session, "paused", sub)
    return sub


def resume(session: Session, *, account_id: str, subscription_id: str) -> Subscription:
    """Restore the frozen remaining time: the period end moves by the paused duration."""
    sub = _lock(session, subscription_id, account_id)
    if sub.status != "paused" or sub.paused_at is None:
        raise _state_conflict(sub, "resume", ErrorCode.SUBSCRIPTION_NOT_PAUSED)
    paused_for = now() - as_utc(sub.paused_at)
    sub.status = "active"
    sub.paused_at = None
    sub.cycle_anchor = as_utc(sub.cycle_anchor) + paused_for
    sub.current_period_end = as_utc(sub.current_period_end) + paused_for
    sub.updated_at = now()
    credits.shift_grants(session, sub, paused_for)
    _schedule_renewal(session, sub)
    _emit(session, "resumed", sub, paused_seconds=int(paused_for.total_seconds()))
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
        sub = _lock(session, subscription_id, account_id)
        kinds = (sub.kind,) if sub.kind != "enterprise" else ("enterprise",)
        new_plan = subscribable_plan(session, new_plan_id, kinds=kinds, account_id=account_id)
        plan = session.get(Plan, sub.plan_id)
        assert plan is not None
        if sub.status not in ("active", "trialing"):
            raise _state_conflict(sub, "change the plan of", ErrorCode.SUBSCRIPTION_NOT_ACTIVE)
        if sub.open_invoice_id is not None:
            raise _payment_pending(sub)
        if new_plan.id == sub.plan_id:
            if sub.scheduled_plan_id is None:
                raise Conflict(
                    "The subscription is already on this plan.",
                    code=ErrorCode.PLAN_UNCHANGED,
                    details={"plan_id": new_plan_id},
                )
            sub.scheduled_plan_id = None  # staying: drop the scheduled change
            _emit(session, "updated", sub, change="scheduled_change_canceled")
            return view(session, sub)
        upgrade = new_plan.period == plan.period and new_plan.price_micros > plan.price_micros
        if sub.status == "trialing" or not upgrade:
            if sub.status == "trialing":
                sub.plan_id, sub.scheduled_plan_id = new_plan.id, None
                change = "trial_plan_changed"
            else:
                sub.scheduled_plan_id = new_plan.id
                change = "downgrade_scheduled"
            sub.updated_at = now()
            _emit(session, "updated", sub, change=change)
            return view(session, sub)
        at = now()
        start, end = as_utc(sub.current_period_start), as_utc(sub.current_period_end)
        unused = round_to_cent(prorate(plan.price_micros, start=start, end=end, at=at))
        remaining = round_to_cent(prorate(new_plan.price_micros, start=start, end=end, at=at))
        credit_delta = prorate(
            (new_plan.included_credits_micros or 0) - (plan.included_credits_micros or 0),
            start=start,
            end=end,
            at=at,
        )
        invoice = _open_invoice(
            session,
            sub,
            reason="subscription_update",
            lines=[
                invoices.Line(
                    "proration",
                    f"Unused time on {plan.name} after {at:%Y-%m-%d %H:%M:%S} UTC",
                    -unused,
                    (at, end),
                ),
                invoices.Line(
                    "proration",
                    f"Remaining time on {new_plan.name} after {at:%Y-%m-%d %H:%M:%S} UTC",
                    remaining,
                    (at, end),
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
    return _answer(services, paid, account_id=account_id, subscription_id=subscription_id)


def reset_cycle(services: Services, *, account_id: str, subscription_id: str) -> dict[str, Any]:
    """Start a new period now; the unused part of the current one is credited on the new
    period's invoice, and the current period's included credits end."""
    database = services.database
    with database.transaction() as session:
        sub = _lock(session, subscription_id, account_id)
        if sub.status != "active":
            raise _state_conflict(sub, "reset the cycle of", ErrorCode.SUBSCRIPTION_NOT_ACTIVE)
        if sub.open_invoice_id is not None:
            raise _payment_pending(sub)
        plan = session.get(Plan, sub.plan_id)
        assert plan is not None
        at = now()
        invoices.lock_series(session, "invoice")  # the series before the wallet
        unused = unused_time(session, sub, plan, at=at)
        new_end = add_periods(at, plan.period, 1)
        lines = [
            *unused.lines(plan, at, as_utc(sub.current_period_end)),
            _period_line(plan, at, new_end),
        ]
        invoice = _open_invoice(
            session,
            sub,
            reason="subscription_reset",
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
    return _answer(services, paid, account_id=account_id, subscription_id=subscription_id)


def payable_plan(session: Session, *, account_id: str, plan_id: int) -> Plan:
    """The checks a subscribe payment link passes when it is handed out and again before
    the human's card is charged (the place is taken for good only when they pay)."""
    plan = subscribable_plan(session, plan_id, kinds=SELF_SERVE_KINDS, account_id=account_id)
    check_slot(session, account_id, plan, replace_stale=False)
    return plan


@checkout.LINK_SUBSCRIPTION_PAID.subscribe
def _on_link_paid(session: Session, event: checkout.LinkPaid) -> str | None:
    return start_from_checkout(
        session,
        account_id=event.account_id,
        plan_id=event.plan_id,
        payment=event.payment,
        session_id=event.session_id,
    )


@checkout.PLAN_PAYABLE.subscribe
def _check_plan_payable(session: Session, event: checkout.PlanToPay) -> None:
    payable_plan(session, account_id=event.account_id, plan_id=event.plan_id)
