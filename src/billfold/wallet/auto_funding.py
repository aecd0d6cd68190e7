"""Auto-funding: top the wallet up from the default card when a debit leaves it low.

A debit that leaves the balance under `charge_threshold` enqueues one top-up job
(deduplicated per wallet, and only while the rule is armed: one charge per crossing).
The job charges `auto_charge_amount` with `job:<id>` as the processor's idempotency
key, so a job re-run after a crash charges once. Three declines in a row switch the
rule off with the reason shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from billfold.jobs import service as jobs
from billfold.jobs.service import ClaimedJob
from billfold.ledger import service as ledger
from billfold.ledger.models import Wallet
from billfold.money import from_micros, micros_to_cents
from billfold.payments import service as payments
from billfold.processors.base import UnknownPaymentMethod
from billfold.webhooks import service as webhooks

if TYPE_CHECKING:
    from billfold.services import Services

JOB_KIND = "wallet.auto_funding"
MAX_CONSECUTIVE_DECLINES = 3


def state_view(wallet: Wallet) -> dict[str, Any]:
    return {
        "enabled": wallet.auto_funding_enabled,
        "auto_charge_amount": (
            from_micros(wallet.auto_charge_amount_micros)
            if wallet.auto_charge_amount_micros is not None
            else None
        ),
        "charge_threshold": (
            from_micros(wallet.charge_threshold_micros)
            if wallet.charge_threshold_micros is not None
            else None
        ),
        "consecutive_failures": wallet.auto_funding_failures,
        "disabled_reason": wallet.auto_funding_disabled_reason,
    }


def enable(
    session: Session,
    *,
    account_id: str,
    auto_charge_amount_micros: int,
    charge_threshold_micros: int,
) -> Wallet:
    wallet = ledger.lock_wallet(session, account_id)
    if payments.default_payment_method(session, account_id) is None:
        raise payments.PaymentMethodRequired(
            "Auto-funding charges the default card: save a card first "
            "(POST /billing/payment-methods)."
        )
    session.execute(
        update(Wallet)
        .where(Wallet.account_id == account_id)
        .values(
            auto_funding_enabled=True,
            auto_charge_amount_micros=auto_charge_amount_micros,
            charge_threshold_micros=charge_threshold_micros,
            auto_funding_armed=True,
            auto_funding_failures=0,
            auto_funding_disabled_reason=None,
        )
    )
    session.refresh(wallet)
    return wallet


def disable(session: Session, *, account_id: str, reason: str | None = None) -> Wallet:
    wallet = ledger.lock_wallet(session, account_id)
    session.execute(
        update(Wallet)
        .where(Wallet.account_id == account_id)
        .values(auto_funding_enabled=False, auto_funding_disabled_reason=reason)
    )
    session.refresh(wallet)
    return wallet


def after_debit(session: Session, *, locked_wallet: Wallet, balance_after_micros: int) -> None:
    """Called in a debit's transaction, with the wallet row it locked (values as before)."""
    threshold = locked_wallet.charge_threshold_micros
    if (
        not locked_wallet.auto_funding_enabled
        or threshold is None
        or balance_after_micros >= threshold
    ):
        return
    disarmed = session.execute(
        update(Wallet)
        .where(
            Wallet.account_id == locked_wallet.account_id,
            Wallet.auto_funding_armed.is_(True),
        )
        .values(auto_funding_armed=False)
    ).rowcount  # type: ignore[attr-defined]
    if disarmed:
        webhooks.emit(
            session,
            type="wallet.low_balance",
            account_id=locked_wallet.account_id,
            data={
                "account_id": locked_wallet.account_id,
                "balance": from_micros(balance_after_micros),
                "charge_threshold": from_micros(threshold),
                "currency": locked_wallet.currency,
            },
        )
        jobs.enqueue(
            session,
            kind=JOB_KIND,
            account_id=locked_wallet.account_id,
            dedupe_key=f"auto_funding:{locked_wallet.account_id}",
        )


def run_top_up(services: Services, job: ClaimedJob) -> None:
    """The job: charge the default card and credit the wallet, or count the decline."""
    database, processor = services.database, services.processor
    account_id = job.account_id
    assert account_id is not None
    with database.read() as session:
        wallet = session.get(Wallet, account_id)
        assert wallet is not None
        if not wallet.auto_funding_enabled or wallet.auto_charge_amount_micros is None:
            return
        amount = wallet.auto_charge_amount_micros
        currency = wallet.currency
        card = payments.default_payment_method(session, account_id)
        card_id = card.id if card else None
    if card_id is None:
        with database.transaction() as session:
            disable(session, account_id=account_id, reason="No default card on file.")
        return
    customer_id = payments.ensure_customer(database, processor, account_id)
    try:
        result = processor.charge(
            customer_id=customer_id,
            payment_method_id=card_id,
            amount_cents=micros_to_cents(amount),
            currency=currency,
            idempotency_key=f"job:{job.id}",
            description="Wallet auto-funding",
        )
    except UnknownPaymentMethod:  # nothing was charged; retrying would not help
        with database.transaction() as session:
            disable(
                session,
                account_id=account_id,
                reason="The default card is no longer available at the processor.",
            )
        return
    with database.transaction() as session:
        payment, first_time = payments.record_payment(
            session,
            account_id=account_id,
            purpose="auto_funding",
            amount_micros=amount,
            currency=currency,
            payment_method_id=card_id,
            result=result,
        )
        if not first_time:
            return  # a re-run of a job whose outcome is already recorded
        if result.succeeded:
            payments.credit_purchase(
                session,
                payment,
                kind="auto_funding",
                usecase="auto_funding",
                description="Wallet auto-funded by card",
            )
            session.execute(
                update(Wallet)
                .where(Wallet.account_id == account_id)
                .values(auto_funding_failures=0)
            )
            return
        wallet = ledger.lock_wallet(session, account_id)
        ledger.record_failed_attempt(
            session,
            account_id=account_id,
            kind="auto_funding",
            amount_micros=amount,
            balance_micros=wallet.balance_micros,
            description=f"Auto-funding declined: {result.failure_message}",
            payment_id=payment.id,
            meta={"decline_code": result.decline_code},
        )
        failures = wallet.auto_funding_failures + 1
        values: dict[str, Any] = {"auto_funding_failures": failures, "auto_funding_armed": True}
        event = {
            "account_id": account_id,
            "amount": from_micros(amount),
            "currency": currency,
            "payment_intent_id": payment.id,
            "decline_code": result.decline_code,
            "consecutive_failures": failures,
        }
        webhooks.emit(session, type="wallet.auto_funding_failed", account_id=account_id, data=event)
        if failures >= MAX_CONSECUTIVE_DECLINES:
            values["auto_funding_enabled"] = False
            values["auto_funding_disabled_reason"] = (
                f"Disabled after {failures} declined top-ups in a row "
                f"(last: {result.decline_code})."
            )
            webhooks.emit(
                session,
                type="wallet.auto_funding_disabled",
                account_id=account_id,
                data={**event, "reason": values["auto_funding_disabled_reason"]},
            )
        session.execute(update(Wallet).where(Wallet.account_id == account_id).values(**values))
