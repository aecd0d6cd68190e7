"""Saved cards and card payments: the account's side of what the processor did."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from billfold.accounts.models import Account
from billfold.accounts.service import get_account
from billfold.clock import now
from billfold.db import Database, insert_or_ignore
from billfold.errors import BillfoldError, Conflict, ErrorCode, NotFound
from billfold.ledger import service as ledger
from billfold.ledger.models import LedgerTransaction
from billfold.ledger.service import lock_wallet
from billfold.money import from_micros
from billfold.payments.models import OPEN_STATES, Payment, PaymentAttempt, PaymentMethod
from billfold.processors.base import Card, CardError, ChargeResult, Processor, UnknownPaymentMethod
from billfold.webhooks import service as webhooks


class PaymentMethodRequired(BillfoldError):
    code = ErrorCode.PAYMENT_METHOD_REQUIRED


class CardDeclined(BillfoldError):
    """The processor refused to save the card (Stripe declines some cards on attach)."""

    code = ErrorCode.CARD_DECLINED


def payment_method_not_found(payment_method_id: str) -> NotFound:
    return NotFound(
        "No such payment method.",
        code=ErrorCode.PAYMENT_METHOD_NOT_FOUND,
        details={"payment_method_id": payment_method_id},
    )


def payment_method_view(pm: PaymentMethod) -> dict[str, Any]:
    return {
        "id": pm.id,
        "type": "card",
        "brand": pm.brand,
        "last4": pm.last4,
        "exp_month": pm.exp_month,
        "exp_year": pm.exp_year,
        "is_default": pm.is_default,
        "created_at": pm.created_at,
    }


def payment_view(payment: Payment) -> dict[str, Any]:
    return {
        "payment_intent_id": payment.id,
        "status": payment.status,
        "purpose": payment.purpose,
        "amount": from_micros(payment.amount_micros),
        "amount_refunded": from_micros(payment.refunded_micros),
        "currency": payment.currency,
        "payment_method_id": payment.payment_method_id,
        "failure_code": payment.failure_code,
        "decline_code": payment.decline_code,
        "failure_message": payment.failure_message,
        "created_at": payment.created_at,
    }


def list_payment_methods(session: Session, account_id: str) -> list[PaymentMethod]:
    return list(
        session.scalars(
            select(PaymentMethod)
            .where(PaymentMethod.account_id == account_id)
            .order_by(PaymentMethod.created_at.desc(), PaymentMethod.id)
        )
    )


def owned_payment_method(
    session: Session, account_id: str, pm_id: str, *, lock: bool = False
) -> PaymentMethod:
    """The account's saved card (404 for anyone else's); with `lock`, its row locked."""
    if lock:
        pm = session.scalars(
            select(PaymentMethod)
            .where(PaymentMethod.id == pm_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one_or_none()
    else:
        pm = session.get(PaymentMethod, pm_id)
    if pm is None or pm.account_id != account_id:
        raise payment_method_not_found(pm_id)
    return pm


def default_payment_method(
    session: Session, account_id: str, *, to_charge: bool = False
) -> PaymentMethod | None:
    """The account's default card; `to_charge` (a payment attempt about to be reserved on
    it) holds it with a share lock to the transaction's end, so a removal waits, then
    finds the attempt (see `remove_payment_method`)."""
    statement = select(PaymentMethod).where(
        PaymentMethod.account_id == account_id, PaymentMethod.is_default.is_(True)
    )
    if to_charge:
        statement = statement.with_for_update(read=True)
    return session.scalars(statement).one_or_none()


def _make_default(session: Session, account_id: str, pm_id: str) -> None:
    session.execute(
        update(PaymentMethod)
        .where(PaymentMethod.account_id == account_id, PaymentMethod.id != pm_id)
        .where(PaymentMethod.is_default.is_(True))
        .values(is_default=False)
    )
    session.execute(update(PaymentMethod).where(PaymentMethod.id == pm_id).values(is_default=True))


def save_card(
    session: Session, *, account_id: str, card: Card, make_default: bool
) -> PaymentMethod:
    """Record a card attached at the processor; the caller's transaction decides default."""
    lock_wallet(session, account_id)  # serializes card changes of one account
    insert_or_ignore(
        session,
        PaymentMethod,
        {
            "id": card.id,
            "account_id": account_id,
            "brand": card.brand,
            "last4": card.last4,
            "exp_month": card.exp_month,
            "exp_year": card.exp_year,
            "fingerprint": card.fingerprint,
            "is_default": False,
        },
        ["id"],
    )
    pm = owned_payment_method(session, account_id, card.id)
    if make_default or default_payment_method(session, account_id) is None:
        _make_default(session, account_id, card.id)
    session.refresh(pm)
    return pm


def set_default(session: Session, *, account_id: str, pm_id: str) -> PaymentMethod:
    lock_wallet(session, account_id)
    pm = owned_payment_method(session, account_id, pm_id)
    _make_default(session, account_id, pm_id)
    session.refresh(pm)
    return pm


def remove_payment_method(
    session: Session, *, account_id: str, pm_id: str, refuse_while_charging: bool = False
) -> PaymentMethod:
    """Delete a saved card; if it was the default, the newest remaining card becomes default.
    With `refuse_while_charging` (the account's own request; not a card the processor
    already detached), 409 while a payment attempt on it is open: checked after the card's
    row is locked, which an attempt's reservation holds shared (`default_payment_method`),
    so the check sees any attempt reserved on it."""
    lock_wallet(session, account_id)
    pm = owned_payment_method(session, account_id, pm_id, lock=True)
    if refuse_while_charging:
        _refuse_while_charging(session, account_id, pm_id)
    was_default = pm.is_default
    session.delete(pm)
    session.flush()
    if was_default:
        remaining = list_payment_methods(session, account_id)
        if remaining:
            _make_default(session, account_id, remaining[0].id)
    return pm


def _refuse_while_charging(session: Session, account_id: str, pm_id: str) -> None:
    """409 while a payment attempt on the card is open (reserved, or its charge on its way,
    such as a renewal batch's): removing the card then would leave the attempt to charge a
    card the account no longer has."""
    found = session.scalars(
        select(PaymentAttempt.id)
        .where(
            PaymentAttempt.account_id == account_id,
            PaymentAttempt.payment_method_id == pm_id,
            PaymentAttempt.state.in_(OPEN_STATES),
        )
        .limit(1)
    ).first()
    if found is not None:
        raise Conflict(
            "A payment on this card is in progress; try again shortly.",
            code=ErrorCode.PAYMENT_METHOD_IN_USE,
            details={"payment_method_id": pm_id},
        )


def ensure_customer(database: Database, processor: Processor, account_id: str) -> str:
    """The account's processor customer, created on first need (race-safe)."""
    with database.read() as session:
        account = get_account(session, account_id)
        if account.processor_customer_id:
            return account.processor_customer_id
        email = account.email
    customer_id = processor.create_customer(email=email, account_id=account_id)
    with database.transaction() as session:
        session.execute(
            update(Account)
            .where(Account.id == account_id, Account.processor_customer_id.is_(None))
            .values(processor_customer_id=customer_id)
        )
        winner = get_account(session, account_id).processor_customer_id
    assert winner is not None
    return winner


def processor_card(processor: Processor, *, payment_method_id: str, customer_id: str) -> Card:
    """A card known to the processor that is unattached or already this customer's."""
    try:
        card = processor.retrieve_payment_method(payment_method_id)
    except UnknownPaymentMethod:
        raise payment_method_not_found(payment_method_id) from None
    if card.customer_id is not None and card.customer_id != customer_id:
        raise payment_method_not_found(payment_method_id)
    return card


def attach_card(processor: Processor, *, payment_method_id: str, customer_id: str) -> Card:
    try:
        return processor.attach_payment_method(payment_method_id, customer_id=customer_id)
    except UnknownPaymentMethod:
        raise payment_method_not_found(payment_method_id) from None
    except CardError as exc:
        raise CardDeclined(
            exc.message, details={"decline_code": exc.decline_code, "reason": exc.code}
        ) from None


@dataclass(frozen=True)
class NewPayment:
    """A processor's outcome to store, for the account, what it paid for (`purpose`) and
    the amount, currency and card of the attempt that made it."""

    account_id: str
    purpose: str
    amount_micros: int
    currency: str
    payment_method_id: str
    result: ChargeResult

    def values(self) -> dict[str, Any]:
        result = self.result
        return {
            "id": result.payment_intent_id,
            "account_id": self.account_id,
            "purpose": self.purpose,
            "amount_micros": self.amount_micros,
            "currency": self.currency,
            "status": result.status,
            "payment_method_id": self.payment_method_id,
            "failure_code": result.failure_code,
            "decline_code": result.decline_code,
            "failure_message": result.failure_message,
            "refunded_micros": 0,
        }


def record_payment(session: Session, new: NewPayment) -> tuple[Payment, bool]:
    """Store the processor's outcome once; True when this call recorded it."""
    inserted = insert_or_ignore(session, Payment, new.values(), ["id"])
    payment = session.get(Payment, new.result.payment_intent_id, populate_existing=True)
    assert payment is not None
    assert payment.account_id == new.account_id
    if inserted:
        _emit_recorded(session, payment)
    return payment, inserted


def record_new_payments(session: Session, new: list[NewPayment]) -> list[Payment]:
    """`record_payment` for processor outcomes no payment row can hold yet (charges just
    made under keys whose attempts this transaction settles), in one multi-row INSERT: a
    payment recorded already is a bug, and raises (rolling the caller back). The
    payments as written, not loaded into the session."""
    current = now()
    rows = [{**payment.values(), "disputed": False, "created_at": current} for payment in new]
    if rows:
        session.execute(insert(_PAYMENTS), rows)
    payments = [Payment(**row) for row in rows]
    for payment in payments:
        _emit_recorded(session, payment)
    return payments


_PAYMENTS = cast(Table, Payment.__table__)


def _emit_recorded(session: Session, payment: Payment) -> None:
    webhooks.emit(
        session,
        type="payment.succeeded" if payment.status == "succeeded" else "payment.failed",
        account_id=payment.account_id,
        data=lambda: payment_view(payment),
    )


def get_payment(session: Session, *, account_id: str, payment_intent_id: str) -> Payment:
    payment = session.get(Payment, payment_intent_id)
    if payment is None or payment.account_id != account_id:
        raise NotFound(
            "No such payment.",
            code=ErrorCode.PAYMENT_NOT_FOUND,
            details={"payment_intent_id": payment_intent_id},
        )
    return payment


INVOICE_DESCRIPTIONS = {
    "wallet_funding": "Prepaid wallet credit",
    "auto_funding": "Prepaid wallet credit (auto-funding)",
    "checkout": "Prepaid wallet credit (payment link)",
    "coupon_purchase": "Prepaid wallet credit (coupon purchase)",
    "subscription_charge": "One-off charge, credited to the prepaid wallet",
}


def credit_purchase(
    session: Session,
    payment: Payment,
    *,
    kind: str,
    usecase: str,
    description: str,
    meta: dict[str, Any] | None = None,
) -> LedgerTransaction:
    """Credit a succeeded card payment to the wallet as purchased credit (once per payment:
    the ledger reference `payment:<id>` is unique per account), and invoice it."""
    from billfold.invoices.service import invoice_card_payment

    invoice = invoice_card_payment(
        session,
        account_id=payment.account_id,
        payment_intent_id=payment.id,
        amount_micros=payment.amount_micros,
        currency=payment.currency,
        line_kind="wallet_funding",
        description=INVOICE_DESCRIPTIONS.get(kind, "Prepaid wallet credit"),
    )
    txn = ledger.post(
        session,
        account_id=payment.account_id,
        kind=kind,
        usecase=usecase,
        description=description,
        payment_id=payment.id,
        reference=f"payment:{payment.id}",
        postings=[
            ledger.Posting(ledger.wallet_account("purchased"), payment.amount_micros),
            ledger.Posting(ledger.PROCESSOR_CLEARING, -payment.amount_micros),
        ],
        meta=meta,
    )
    webhooks.emit(
        session,
        type="wallet.funded",
        account_id=payment.account_id,
        data={
            "account_id": payment.account_id,
            "amount": from_micros(payment.amount_micros),
            "currency": payment.currency,
            "payment_intent_id": payment.id,
            "invoice_id": invoice.id,
            "transaction_id": txn.id,
            "balance": from_micros(txn.balance_after_micros),
            "source": kind,
        },
    )
    return txn
