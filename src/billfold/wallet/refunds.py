"""Withdrawals and refunds: purchased credit back to the cards it came from, newest first,
with coupon bonuses taken back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from billfold.db import Database
from billfold.errors import (
    Conflict,
    ErrorCode,
    InsufficientFunds,
    NotFound,
)
from billfold.ids import new_id
from billfold.invoices.service import credit_note_for_refund
from billfold.ledger import service as ledger
from billfold.ledger.models import LedgerPosting, LedgerTransaction, Wallet
from billfold.ledger.service import get_wallet
from billfold.money import floor_to_cent, from_micros, micros_to_cents
from billfold.payments.models import Payment, Refund
from billfold.processors.base import Processor
from billfold.webhooks import service as webhooks

REFUNDABLE_PURPOSES = (
    "wallet_funding",
    "auto_funding",
    "checkout",
    "coupon_purchase",
    "subscription_charge",
)


@dataclass(frozen=True)
class RefundBatch:
    """Card refunds that return purchased credit: a withdrawal, or an operator refund."""

    id: str
    amount_micros: int
    refunds: list[Refund]
    wallet: Wallet


def withdraw(
    database: Database, processor: Processor, *, account_id: str, amount_micros: int
) -> RefundBatch:
    """Return purchased credit to the cards it came from, newest payment first."""
    batch_id = new_id("wd")
    with database.transaction() as session:
        wallet = ledger.lock_wallet(session, account_id)
        plan = _plan_refunds(
            session, wallet, _refundable_payments(session, account_id), amount_micros
        )
        if plan is None:
            raise InsufficientFunds(
                "Only purchased credit paid by card can be refunded to a card, less any "
                "bonus its purchase came with, and there is not enough of it.",
                details={"withdrawable": from_micros(withdrawable_micros(session, wallet))},
            )
        refunds = _debit_and_plan_refunds(
            session, account_id=account_id, plan=plan, batch_id=batch_id, reason="withdrawal"
        )
    return _send_refunds(database, processor, batch_id, account_id, amount_micros, refunds)


def refund_payment(
    database: Database,
    processor: Processor,
    *,
    payment_intent_id: str,
    amount_micros: int | None,
    reason: str,
) -> RefundBatch:
    """Operator refund of one card payment (all that is left of it unless an amount is given).

    The refunded money leaves the wallet's purchased credit: what was already spent
    cannot be refunded this way.
    """
    batch_id = new_id("rfd")
    with database.transaction() as session:
        payment = session.get(Payment, payment_intent_id)
        if payment is None:
            raise NotFound("No such payment.", code=ErrorCode.PAYMENT_NOT_FOUND)
        if payment.status != "succeeded" or payment.purpose not in REFUNDABLE_PURPOSES:
            raise Conflict(
                "Only a succeeded wallet funding can be refunded.", code=ErrorCode.NOT_REFUNDABLE
            )
        left = payment.amount_micros - payment.refunded_micros
        amount = left if amount_micros is None else amount_micros
        if amount > left or amount == 0:
            raise Conflict(
                "The refund exceeds what is left of the payment.",
                code=ErrorCode.REFUND_EXCEEDS_PAYMENT,
                details={"refundable": from_micros(left)},
            )
        account_id = payment.account_id
        wallet = ledger.lock_wallet(session, account_id)
        plan = _plan_refunds(session, wallet, [payment], amount)
        if plan is None:
            raise InsufficientFunds(
                "Only purchased credit can be refunded to a card (less any bonus the "
                "purchase came with), and there is not enough of it.",
                details={"purchased": from_micros(wallet.purchased_micros)},
            )
        refunds = _debit_and_plan_refunds(
            session, account_id=account_id, plan=plan, batch_id=batch_id, reason=reason
        )
    return _send_refunds(database, processor, batch_id, account_id, amount, refunds)


# Ledger transactions that give or take back a purchase's coupon bonus; they carry the
# purchase's payment id, so what is still outstanding of a bonus is their signed sum.
BONUS_KINDS = ("coupon_credit", "coupon_bonus_clawback", "coupon_bonus_clawback_reversal")


@dataclass(frozen=True)
class PlannedRefund:
    """Part of a card payment to refund, with the bonus its purchase came with (all of
    what is outstanding, taken back by the first refund that touches the purchase)."""

    payment: Payment
    amount_micros: int
    bonus_micros: int
    bonus_from_promotional_micros: int

    @property
    def bonus_from_purchased_micros(self) -> int:
        return self.bonus_micros - self.bonus_from_promotional_micros


def _refundable_payments(session: Session, account_id: str) -> list[Payment]:
    """Card payments whose money is purchased credit, newest first."""
    return list(
        session.scalars(
            select(Payment)
            .where(
                Payment.account_id == account_id,
                Payment.status == "succeeded",
                Payment.purpose.in_(REFUNDABLE_PURPOSES),
                Payment.refunded_micros < Payment.amount_micros,
                Payment.disputed.is_(False),  # the bank may take it back: not ours to refund
            )
            .order_by(Payment.created_at.desc(), Payment.id.desc())
        )
    )


def _outstanding_bonuses(
    session: Session, account_id: str, payment_ids: list[str]
) -> dict[str, int]:
    if not payment_ids:
        return {}
    signed = case(
        (LedgerTransaction.type == "credit", LedgerTransaction.amount_micros),
        else_=-LedgerTransaction.amount_micros,
    )
    rows = session.execute(
        select(LedgerTransaction.payment_id, func.sum(signed))
        .where(
            LedgerTransaction.account_id == account_id,
            LedgerTransaction.payment_id.in_(payment_ids),
            LedgerTransaction.kind.in_(BONUS_KINDS),
            LedgerTransaction.status == "succeeded",
        )
        .group_by(LedgerTransaction.payment_id)
    ).all()
    return {str(payment_id): int(total) for payment_id, total in rows if total}


def _plan_refunds(
    session: Session, wallet: Wallet, candidates: list[Payment], amount_micros: int | None
) -> list[PlannedRefund] | None:
    """Which payments a refund of `amount_micros` takes, in the given order (None: as much
    as can be refunded), or None if the wallet cannot cover `amount_micros`.

    Refunding a purchase that came with a coupon bonus takes the bonus back: from
    promotional credit while there is some, the rest from purchased credit, which so
    becomes non-withdrawable. Card refunds are in whole cents.
    """
    bonuses = _outstanding_bonuses(session, wallet.account_id, [p.id for p in candidates])
    purchased, promotional = wallet.purchased_micros, wallet.promotional_micros
    plan: list[PlannedRefund] = []
    total = 0
    for payment in candidates:
        left = payment.amount_micros - payment.refunded_micros
        bonus = bonuses.get(payment.id, 0)
        from_promotional = min(bonus, promotional)
        room = purchased - (bonus - from_promotional)
        wanted = left if amount_micros is None else min(left, amount_micros - total)
        take = min(wanted, floor_to_cent(room)) if room > 0 else 0
        if take <= 0:
            break
        plan.append(PlannedRefund(payment, take, bonus, from_promotional))
        total += take
        purchased -= take + bonus - from_promotional
        promotional -= from_promotional
        if take < left or total == amount_micros:
            break
    if amount_micros is not None and total < amount_micros:
        return None
    return plan


def withdrawable_micros(session: Session, wallet: Wallet) -> int:
    """Exactly what a withdrawal can return to cards now (see _plan_refunds)."""
    plan = _plan_refunds(session, wallet, _refundable_payments(session, wallet.account_id), None)
    assert plan is not None
    return sum(item.amount_micros for item in plan)


def _debit_and_plan_refunds(
    session: Session,
    *,
    account_id: str,
    plan: list[PlannedRefund],
    batch_id: str,
    reason: str,
) -> list[Refund]:
    """Take purchased credit off the (locked) wallet and reserve it against the planned
    payments, taking back their bonuses.

    The debit and the refund plan commit together; each refund then goes to the
    processor under its own id as idempotency key, and one the processor refuses is
    put back on the wallet with its bonus (see _send_refund), so money is never lost
    between the two.
    """
    refunds: list[Refund] = []
    for item in plan:
        _reserve_refund(session, item.payment.id, item.amount_micros)
        refunds.append(
            Refund(
                id=new_id("re"),
                account_id=account_id,
                payment_id=item.payment.id,
                amount_micros=item.amount_micros,
                status="pending",
                reason=reason,
                withdrawal_id=batch_id,
            )
        )
    session.add_all(refunds)
    amount_micros = sum(item.amount_micros for item in plan)
    ledger.post(
        session,
        account_id=account_id,
        kind=reason,
        usecase=reason,
        description="Refunded to card",
        reference=f"refund_batch:{batch_id}",
        postings=[
            ledger.Posting(ledger.wallet_account("purchased"), -amount_micros),
            ledger.Posting(ledger.PROCESSOR_CLEARING, amount_micros),
        ],
        meta={"batch_id": batch_id},
    )
    for item, refund in zip(plan, refunds, strict=True):
        if item.bonus_micros:
            _take_back_bonus(session, item, refund)
    return refunds


def _take_back_bonus(session: Session, item: PlannedRefund, refund: Refund) -> None:
    postings = [ledger.Posting(ledger.OPERATOR_PROMOTIONS, item.bonus_micros)]
    if item.bonus_from_promotional_micros:
        postings.append(
            ledger.Posting(
                ledger.wallet_account("promotional"), -item.bonus_from_promotional_micros
            )
        )
    if item.bonus_from_purchased_micros:
        postings.append(
            ledger.Posting(ledger.wallet_account("purchased"), -item.bonus_from_purchased_micros)
        )
    ledger.post(
        session,
        account_id=refund.account_id,
        kind="coupon_bonus_clawback",
        usecase="coupon",
        description="Coupon bonus taken back with the refund of its purchase",
        payment_id=item.payment.id,
        reference=f"clawback:{refund.id}",
        postings=postings,
        meta={"refund_id": refund.id},
    )


def _restore_bonus(session: Session, refund: Refund) -> None:
    """A refund the processor refused gives back the bonus its planning took."""
    taken = session.scalars(
        select(LedgerTransaction).where(
            LedgerTransaction.account_id == refund.account_id,
            LedgerTransaction.reference == f"clawback:{refund.id}",
        )
    ).one_or_none()
    if taken is None:
        return
    postings = session.execute(
        select(LedgerPosting.ledger_account, LedgerPosting.amount_micros).where(
            LedgerPosting.transaction_id == taken.id
        )
    ).all()
    ledger.post(
        session,
        account_id=refund.account_id,
        kind="coupon_bonus_clawback_reversal",
        usecase="coupon",
        description="Refund refused by the processor; coupon bonus restored",
        payment_id=refund.payment_id,
        reference=f"clawback_reversal:{refund.id}",
        postings=[ledger.Posting(name, -amount) for name, amount in postings],
        meta={"refund_id": refund.id},
    )


def _send_refunds(
    database: Database,
    processor: Processor,
    batch_id: str,
    account_id: str,
    amount_micros: int,
    refunds: list[Refund],
) -> RefundBatch:
    for refund in refunds:
        _send_refund(database, processor, refund)
    with database.read() as session:
        wallet = get_wallet(session, account_id)
    return RefundBatch(batch_id, amount_micros, refunds, wallet)


def _reserve_refund(session: Session, payment_id: str, amount_micros: int) -> None:
    reserved = session.execute(
        update(Payment)
        .where(
            Payment.id == payment_id,
            Payment.amount_micros - Payment.refunded_micros >= amount_micros,
        )
        .values(refunded_micros=Payment.refunded_micros + amount_micros)
    ).rowcount  # type: ignore[attr-defined]
    if not reserved:
        raise AssertionError(f"refund of {payment_id} exceeds what is left of it")


def _send_refund(database: Database, processor: Processor, refund: Refund) -> None:
    result = processor.refund(
        payment_intent_id=refund.payment_id,
        amount_cents=micros_to_cents(refund.amount_micros),
        idempotency_key=refund.id,
    )
    with database.transaction() as session:
        marked = session.execute(
            update(Refund)
            .where(Refund.id == refund.id, Refund.status == "pending")
            .values(status=result.status, processor_refund_id=result.refund_id)
        ).rowcount  # type: ignore[attr-defined]
        if marked and result.status == "succeeded":
            credit_note_for_refund(
                session,
                refund_id=refund.id,
                payment_intent_id=refund.payment_id,
                amount_micros=refund.amount_micros,
            )
        if marked and result.status != "succeeded":
            _reserve_refund(session, refund.payment_id, -refund.amount_micros)
            ledger.post(
                session,
                account_id=refund.account_id,
                kind="withdrawal_reversal",
                usecase="withdrawal_reversal",
                description="Refund refused by the processor; credit restored",
                reference=f"refund_failed:{refund.id}",
                postings=[
                    ledger.Posting(ledger.wallet_account("purchased"), refund.amount_micros),
                    ledger.Posting(ledger.PROCESSOR_CLEARING, -refund.amount_micros),
                ],
            )
            _restore_bonus(session, refund)
    refund.status = result.status
    refund.processor_refund_id = result.refund_id


def refund_view(refund: Refund) -> dict[str, Any]:
    return {
        "id": refund.id,
        "payment_intent_id": refund.payment_id,
        "amount": from_micros(refund.amount_micros),
        "status": refund.status,
    }


def record_processor_refund(
    session: Session, *, payment_intent_id: str, processor_refund_id: str, amount_micros: int
) -> Refund | None:
    """A refund made at the processor, not by Billfold (Stripe's dashboard), recorded once
    (None: not a payment of Billfold's, or recorded already): the money leaves the wallet's
    purchased credit, the operator bearing what was already spent; with a credit note."""
    payment = session.get(Payment, payment_intent_id)
    if payment is None or payment.status != "succeeded":
        return None
    known = session.scalars(
        select(Refund).where(Refund.processor_refund_id == processor_refund_id)
    ).first()
    if known is not None:
        return None
    wallet = ledger.lock_wallet(session, payment.account_id)
    session.refresh(payment)
    amount = min(amount_micros, payment.amount_micros - payment.refunded_micros)
    if amount <= 0:
        return None
    refund = Refund(
        id=new_id("re"),
        account_id=payment.account_id,
        payment_id=payment.id,
        amount_micros=amount,
        status="succeeded",
        reason="processor_refund",
        processor_refund_id=processor_refund_id,
    )
    session.add(refund)
    session.flush()
    _reserve_refund(session, payment.id, amount)
    from_purchased = min(amount, wallet.purchased_micros)
    postings = [ledger.Posting(ledger.PROCESSOR_CLEARING, amount)]
    if from_purchased:
        postings.append(ledger.Posting(ledger.wallet_account("purchased"), -from_purchased))
    if amount > from_purchased:  # already spent: the operator bears it
        postings.append(ledger.Posting(ledger.OPERATOR_ADJUSTMENTS, from_purchased - amount))
    ledger.post(
        session,
        account_id=payment.account_id,
        kind="processor_refund",
        usecase="refund",
        description="Refunded at the payment processor",
        payment_id=payment.id,
        reference=f"processor_refund:{processor_refund_id}",
        postings=postings,
    )
    _take_back_bonus_after(session, payment, refund)
    credit_note_for_refund(
        session, refund_id=refund.id, payment_intent_id=payment.id, amount_micros=amount
    )
    webhooks.emit(
        session,
        type="payment.refunded",
        account_id=payment.account_id,
        data={**refund_view(refund), "currency": payment.currency, "source": "processor"},
    )
    return refund


def _take_back_bonus_after(session: Session, payment: Payment, refund: Refund) -> None:
    """A refund made at the processor takes its purchase's coupon bonus back too, as one
    made by Billfold does: from promotional credit while there is some, then purchased
    credit; what of it was spent already cannot be taken back (the next refund of the
    payment tries again)."""
    bonus = _outstanding_bonuses(session, payment.account_id, [payment.id]).get(payment.id, 0)
    if bonus <= 0:
        return
    wallet = ledger.lock_wallet(session, payment.account_id)
    session.refresh(wallet)
    from_promotional = min(bonus, wallet.promotional_micros)
    from_purchased = min(bonus - from_promotional, wallet.purchased_micros)
    if from_promotional + from_purchased == 0:
        return
    item = PlannedRefund(
        payment, refund.amount_micros, from_promotional + from_purchased, from_promotional
    )
    _take_back_bonus(session, item, refund)
