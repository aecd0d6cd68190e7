"""Recovering card charges interrupted between the processor and the database.

A synchronous card charge (wallet funding, a coupon purchase, a payment-link payment)
calls the processor between two transactions. If the process dies after the processor
charged but before the outcome was recorded, the card holder has paid and nothing
credits them. So before each such call a recovery job is queued, in its own committed
transaction, a few minutes ahead; recording the outcome cancels it. If it does run, it
asks the processor what happened under the charge's idempotency key, and records and
credits a charge it finds, once: the payment id is unique, and so is the ledger
reference. It never starts a charge of its own.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.clock import now
from billfold.events import Topic
from billfold.jobs import service as jobs
from billfold.jobs.models import Job
from billfold.jobs.service import ClaimedJob
from billfold.payments import service as payments
from billfold.payments.models import Payment
from billfold.processors.base import Card, ChargeResult, UnknownPaymentMethod

if TYPE_CHECKING:
    from billfold.services import Services

log = logging.getLogger("billfold.payments")

JOB_KIND = "payments.recover_charge"
LEDGER_DESCRIPTIONS = {
    "checkout": "Wallet funded through a payment link",
    "subscription_charge": "One-off charge credited to the wallet",
}
DELAY = timedelta(minutes=5)


@dataclass(frozen=True)
class PendingCharge:
    """What a card charge is for, kept until its outcome is recorded."""

    account_id: str
    purpose: str
    amount_micros: int
    currency: str
    payment_method_id: str
    processor_key: str
    save_card: bool = False
    checkout_session_id: str | None = None
    coupon_redemption_id: str | None = None
    plan_id: int | None = None  # a `subscribe` payment link's plan

    @property
    def dedupe_key(self) -> str:
        return _dedupe_key(self.processor_key)


@dataclass(frozen=True)
class ChargeRecorded:
    """A card charge that succeeded, recorded as `payment` for the first time."""

    charge: PendingCharge
    payment: Payment


# What higher domains do when a charge's outcome is recorded (see billfold.events).
# A `subscribe` payment link's charge: start the subscription; its id, or None if the
# account took that subscription's place meanwhile (the money then funds the wallet).
LINK_SUBSCRIPTION_PAID = Topic[ChargeRecorded, "str | None"](
    "payments.link_subscription_paid", single=True
)
# A bonus-coupon purchase's charge: finish the redemption (grant the bonus).
COUPON_PURCHASE_PAID = Topic[ChargeRecorded, None]("payments.coupon_purchase_paid", single=True)
# The janitor found that an interrupted charge never reached the processor.
CHARGE_NOT_MADE = Topic[PendingCharge, None]("payments.charge_not_made")
# The janitor recorded an interrupted charge that had succeeded.
CHARGE_RECOVERED = Topic[ChargeRecorded, None]("payments.charge_recovered")


def watch(session: Session, charge: PendingCharge) -> None:
    jobs.enqueue(
        session,
        kind=JOB_KIND,
        account_id=charge.account_id,
        payload=asdict(charge),
        run_at=now() + DELAY,
        dedupe_key=charge.dedupe_key,
    )


def _dedupe_key(processor_key: str) -> str:
    return f"recover:{processor_key}"


def watch_pending(session: Session, processor_key: str) -> bool:
    """Whether this charge's recovery job is still to run (queued, or running now): the
    charge may have been made and its outcome is not recorded. (Recording the outcome
    settles the watch in the same transaction.)"""
    return (
        session.scalar(
            select(Job.id)
            .where(
                Job.dedupe_key == _dedupe_key(processor_key),
                Job.status.in_(("queued", "running")),
            )
            .limit(1)
        )
        is not None
    )


def settle(session: Session, charge: PendingCharge) -> None:
    """The outcome is recorded: the recovery job is not needed."""
    jobs.cancel(session, dedupe_key=charge.dedupe_key)


def record_outcome(
    session: Session,
    charge: PendingCharge,
    result: ChargeResult,
    *,
    card: Card | None,
    recovered: bool = False,
) -> tuple[Payment, str | None]:
    """Record a charge's outcome once and, if it succeeded, everything it pays for: the
    purchased credit (or the subscription a payment link starts), the card to keep, a
    coupon's bonus. (payment, id of the ledger transaction that booked it)
    """
    settle(session, charge)
    payment, first_time = payments.record_payment(
        session,
        account_id=charge.account_id,
        purpose=charge.purpose,
        amount_micros=charge.amount_micros,
        currency=charge.currency,
        payment_method_id=charge.payment_method_id,
        result=result,
    )
    if not (first_time and result.succeeded):
        return payment, None
    if charge.plan_id is not None and charge.checkout_session_id:
        started = LINK_SUBSCRIPTION_PAID.call(session, ChargeRecorded(charge, payment))
        if started is not None:
            if card is not None:  # renewals charge the card the human subscribed with
                payments.save_card(
                    session, account_id=charge.account_id, card=card, make_default=True
                )
            return payment, started
        # The account took this subscription's place meanwhile: the money is credited,
        # as a payment-link funding (purchased credit, refundable to the card).
        payment.purpose = "checkout"
    meta: dict[str, Any] = {}
    if charge.checkout_session_id:
        meta["session_id"] = charge.checkout_session_id
    if recovered:
        meta["recovered"] = True
    txn = payments.credit_purchase(
        session,
        payment,
        kind=payment.purpose,
        usecase="wallet_funding",
        description=LEDGER_DESCRIPTIONS.get(payment.purpose, "Wallet funded by card")
        + (" (recorded after an interruption)" if recovered else ""),
        meta=meta or None,
    )
    if card is not None:
        payments.save_card(session, account_id=charge.account_id, card=card, make_default=False)
    if charge.coupon_redemption_id:
        COUPON_PURCHASE_PAID.call(session, ChargeRecorded(charge, payment))
    return payment, txn.id


def run_recovery(services: Services, job: ClaimedJob) -> None:
    charge = PendingCharge(**job.payload)
    processor = services.processor
    result = processor.find_charge(charge.processor_key)
    if result is None:
        # The charge never reached the processor: nothing to record, nothing owed.
        with services.database.transaction() as session:
            CHARGE_NOT_MADE.publish(session, charge)
        return
    card: Card | None = None
    if charge.save_card and result.succeeded:
        try:
            card = processor.retrieve_payment_method(charge.payment_method_id)
        except UnknownPaymentMethod:
            card = None
    with services.database.transaction() as session:
        payment, transaction_id = record_outcome(session, charge, result, card=card, recovered=True)
        if transaction_id is None:
            return
        log.warning("recovered interrupted card charge %s (%s)", payment.id, charge.purpose)
        CHARGE_RECOVERED.publish(session, ChargeRecorded(charge, payment))
