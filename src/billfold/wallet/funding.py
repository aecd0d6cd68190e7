"""Funding the wallet by card: one payment attempt per request, credited once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from billfold.db import Database
from billfold.errors import (
    PaymentFailed,
    ProcessorError,
)
from billfold.ids import new_id
from billfold.ledger.models import Wallet
from billfold.ledger.service import get_wallet
from billfold.money import from_micros
from billfold.payments import attempts
from billfold.payments import service as payments
from billfold.payments.models import AttemptPurpose, FailureReason, Payment
from billfold.processors.base import Card, Processor


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
