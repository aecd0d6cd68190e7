"""Wallet use cases: balance, history, card funding, withdrawal and usage charges."""

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
    PaymentFailed,
    ProcessorError,
)
from billfold.ids import new_id
from billfold.invoices.service import credit_note_for_refund
from billfold.ledger import service as ledger
from billfold.ledger.models import LedgerPosting, LedgerTransaction, Wallet
from billfold.money import floor_to_cent, from_micros, micros_to_cents
from billfold.payments import attempts
from billfold.payments import service as payments
from billfold.payments.models import AttemptPurpose, FailureReason, Payment, Refund
from billfold.processors.base import Card, Processor
from billfold.wallet import auto_funding

# Card payments whose money is purchased credit, refundable to the card on withdrawal.
REFUNDABLE_PURPOSES = (
    "wallet_funding",
    "auto_funding",
    "checkout",
    "coupon_purchase",
    "subscription_charge",
)
# Ledger transactions that move no wallet money (a subscription's card payment goes
# from clearing to revenue): kept in the ledger, left out of the wallet's history.
OFF_WALLET_KINDS = ("subscription_payment",)


def get_wallet(session: Session, account_id: str) -> Wallet:
    wallet = session.get(Wallet, account_id)
    if wallet is None:
        raise NotFound("No such account.", code=ErrorCode.ACCOUNT_NOT_FOUND)
    return wallet


def balance_view(session: Session, wallet: Wallet) -> dict[str, Any]:
    return {
        "auto_funding": auto_funding.state_view(wallet),
        "balance": from_micros(wallet.balance_micros),
        "currency": wallet.currency,
        "breakdown": {
            "subscription": from_micros(wallet.subscription_micros),
            "promotional": from_micros(wallet.promotional_micros),
            "purchased": from_micros(wallet.purchased_micros),
        },
        "withdrawable": from_micros(withdrawable_micros(session, wallet)),
    }


def transaction_view(txn: LedgerTransaction) -> dict[str, Any]:
    return {
        "id": txn.id,
        "created_at": txn.created_at,
        "type": txn.type,
        "status": txn.status,
        "kind": txn.kind,
        "amount": from_micros(txn.amount_micros),
        "usecase": txn.usecase,
        "description": txn.description,
        "balance_after": from_micros(txn.balance_after_micros),
        "payment_intent_id": txn.payment_id,
        "metadata": txn.meta or {},
    }


def list_transactions(
    session: Session, *, account_id: str, type: str | None, limit: int, offset: int
) -> tuple[list[LedgerTransaction], int]:
    where = [
        LedgerTransaction.account_id == account_id,
        LedgerTransaction.kind.notin_(OFF_WALLET_KINDS),
    ]
    if type is not None:
        where.append(LedgerTransaction.type == type)
    items = list(
        session.scalars(
            select(LedgerTransaction)
            .where(*where)
            .order_by(LedgerTransaction.created_at.desc(), LedgerTransaction.id.desc())
            .limit(limit)
            .offset(offset)
        )
    )
    total = session.scalar(select(func.count()).select_from(LedgerTransaction).where(*where))
    return items, int(total or 0)


def funding_key(account_id: str, idempotency_key: str | None) -> str:
    """The processor idempotency key of a funding charge (one per request key)."""
    return f"fund:{account_id}:{idempotency_key or new_id('once')}"


# Card purchases of wallet credit, by what their payment is recorded as.
FUNDING_PURPOSES = {
    "wallet_funding": AttemptPurpose.WALLET_FUNDING,
    "subscription_charge": AttemptPurpose.CHARGE_AMOUNT,
    "coupon_purchase": AttemptPurpose.COUPON_PURCHASE,
}
LEDGER_DESCRIPTIONS = {
    "checkout": "Wallet funded through a payment link",
    "subscription_charge": "One-off charge credited to the wallet",
}


@dataclass(frozen=True)
class Funded:
    payment: Payment
    wallet: Wallet
    transaction_id: str | None


@dataclass(frozen=True)
class CardToCharge:
    payment_method_id: str
    on_file: bool  # saved on the account; else it is kept once charged


def card_to_charge(
    session: Session, account_id: str, payment_method_id: str | None
) -> CardToCharge:
    """The card given (one of the account's, or one not on file yet) or the default."""
    if payment_method_id is None:
        default = payments.default_payment_method(session, account_id)
        if default is None:
            raise payments.PaymentMethodRequired(
                "Give a payment_method_id: this account has no default card on file."
            )
        return CardToCharge(default.id, on_file=True)
    saved = session.get(payments.PaymentMethod, payment_method_id)
    if saved is not None and saved.account_id != account_id:
        raise payments.payment_method_not_found(payment_method_id)
    return CardToCharge(payment_method_id, on_file=saved is not None)


def begin_funding(
    session: Session,
    *,
    account_id: str,
    amount_micros: int,
    card: CardToCharge,
    idempotency_key: str | None,
    purpose: str = "wallet_funding",
    context: dict[str, Any] | None = None,
) -> attempts.Attempt:
    """The payment attempt of a card purchase of wallet credit (its key derived from the
    request's idempotency key: a retried request reuses the attempt)."""
    wallet = get_wallet(session, account_id)
    return attempts.begin(
        session,
        purpose=FUNDING_PURPOSES[purpose],
        operation=funding_key(account_id, idempotency_key),
        account_id=account_id,
        amount_micros=amount_micros,
        currency=wallet.currency,
        payment_method_id=card.payment_method_id,
        payment_purpose=purpose,
        context={"save_card": not card.on_file, **(context or {})},
    )


def charge_funding(database: Database, processor: Processor, attempt: attempts.Attempt) -> Funded:
    """Charge a card purchase's attempt; its success handler credits the wallet."""

    def check_card(customer_id: str) -> Card | None:
        """A card not on file must be the processor's and not another customer's."""
        if not attempt.context.get("save_card"):
            return None
        return payments.processor_card(
            processor, payment_method_id=attempt.payment_method_id, customer_id=customer_id
        )

    outcome = attempts.run(
        database, processor, attempt, description="Wallet funding", prepare=check_card
    )
    if outcome.attempt.failure_reason == FailureReason.CARD_UNAVAILABLE:
        # The processor no longer has this card for this customer: nothing was charged.
        raise payments.payment_method_not_found(attempt.payment_method_id)
    payment = outcome.payment
    if payment is None:  # the janitor took it for never charged meanwhile (see attempts)
        raise ProcessorError("The card charge could not be recorded; nothing was credited.")
    with database.read() as session:
        wallet = get_wallet(session, attempt.account_id)
    if not outcome.succeeded:
        raise PaymentFailed(
            payment.failure_message or "The card was declined.",
            decline_code=payment.decline_code or "generic_decline",
            payment={
                **payments.payment_view(payment),
                "balance": from_micros(wallet.balance_micros),
            },
        )
    transaction_id = outcome.value if outcome.recorded else None
    return Funded(payment=payment, wallet=wallet, transaction_id=transaction_id)


def fund_wallet(
    database: Database,
    processor: Processor,
    *,
    account_id: str,
    amount_micros: int,
    payment_method_id: str | None,
    idempotency_key: str | None,
    purpose: str = "wallet_funding",
) -> Funded:
    """Charge a card and credit the wallet as purchased credit, exactly once per charge.

    The charge is a payment attempt (`billfold.payments.attempts`): written before the
    processor call, with a key derived from the request's idempotency key, so a retried
    request finds the same attempt and the processor sees one charge; its janitor
    records the outcome if this process dies before it does.
    """
    with database.transaction() as session:
        get_wallet(session, account_id)
        card = card_to_charge(session, account_id, payment_method_id)
        attempt = begin_funding(
            session,
            account_id=account_id,
            amount_micros=amount_micros,
            card=card,
            idempotency_key=idempotency_key,
            purpose=purpose,
        )
    return charge_funding(database, processor, attempt)


def credit_card_funding(
    session: Session,
    event: attempts.Settled,
    *,
    description: str | None = None,
    meta: dict[str, Any] | None = None,
) -> str:
    """Credit a succeeded card purchase to the wallet as purchased credit, invoiced, and
    keep the card it was made with (the id of the ledger transaction)."""
    payment = event.payment
    assert payment is not None
    meta = dict(meta or {})
    if event.recovered:
        meta["recovered"] = True
    text = description or LEDGER_DESCRIPTIONS.get(payment.purpose, "Wallet funded by card")
    txn = payments.credit_purchase(
        session,
        payment,
        kind=payment.purpose,
        usecase="wallet_funding",
        description=text + (" (recorded after an interruption)" if event.recovered else ""),
        meta=meta or None,
    )
    if event.card is not None:
        payments.save_card(
            session, account_id=payment.account_id, card=event.card, make_default=False
        )
    return txn.id


@attempts.on_success(AttemptPurpose.WALLET_FUNDING).subscribe
def _on_funding_paid(session: Session, event: attempts.Settled) -> str:
    return credit_card_funding(session, event)


@attempts.on_success(AttemptPurpose.CHARGE_AMOUNT).subscribe
def _on_charge_amount_paid(session: Session, event: attempts.Settled) -> str:
    return credit_card_funding(session, event)


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


def charge_usage(
    session: Session,
    *,
    account_id: str,
    amount_micros: int,
    usecase: str,
    description: str | None,
    metadata: dict[str, Any] | None,
) -> LedgerTransaction:
    """Debit the wallet for usage, spending subscription, promotional, then purchased credit.

    The wallet row is locked for the split; the conditional UPDATE in ledger.post
    still guards every bucket, so a balance can never go below zero.
    """
    wallet = ledger.lock_wallet(session, account_id)
    if wallet.balance_micros < amount_micros:
        raise InsufficientFunds(
            "The wallet balance cannot cover this charge.",
            details={
                "balance": from_micros(wallet.balance_micros),
                "amount": from_micros(amount_micros),
            },
        )
    postings = [*ledger.spend_split(_buckets(wallet), amount_micros)]
    postings.append(ledger.Posting(ledger.REVENUE_USAGE, amount_micros))
    txn = ledger.post(
        session,
        account_id=account_id,
        kind="usage_charge",
        usecase=usecase,
        description=description,
        postings=postings,
        meta=metadata,
    )
    auto_funding.after_debit(
        session, locked_wallet=wallet, balance_after_micros=txn.balance_after_micros
    )
    return txn


def adjust(
    session: Session, *, account_id: str, amount_micros: int, reason: str
) -> LedgerTransaction:
    """Operator adjustment: a credit lands as promotional credit (it has no card behind it
    to be refunded to); a debit spends in the usual order."""
    wallet = ledger.lock_wallet(session, account_id)
    if amount_micros > 0:
        postings = [ledger.Posting(ledger.wallet_account("promotional"), amount_micros)]
    else:
        postings = ledger.spend_split(_buckets(wallet), -amount_micros)
    txn = ledger.post(
        session,
        account_id=account_id,
        kind="adjustment",
        usecase="adjustment",
        description=reason,
        postings=[*postings, ledger.Posting(ledger.OPERATOR_ADJUSTMENTS, -amount_micros)],
    )
    if amount_micros < 0:
        auto_funding.after_debit(
            session, locked_wallet=wallet, balance_after_micros=txn.balance_after_micros
        )
    return txn


def _buckets(wallet: Wallet) -> dict[str, int]:
    return {
        "subscription": wallet.subscription_micros,
        "promotional": wallet.promotional_micros,
        "purchased": wallet.purchased_micros,
    }
