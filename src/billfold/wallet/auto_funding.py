"""Auto-funding: top the wallet up from the default card when a debit leaves it low.

A debit that leaves the balance under `charge_threshold` enqueues one top-up job
(deduplicated per wallet, and only while the rule is armed: one charge per crossing).
The job charges `auto_charge_amount` as a payment attempt keyed `job:<id>`, so a job
re-run after a crash charges once, and the attempt's janitor records a charge whose
worker died. Three declines in a row switch the rule off with the reason shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from billfold.jobs import service as jobs
from billfold.jobs.service import ClaimedJob
from billfold.ledger import service as ledger
from billfold.ledger.models import Wallet
from billfold.money import from_micros
from billfold.payments import attempts
from billfold.payments import service as payments
from billfold.payments.models import AttemptPurpose, FailureReason
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
        announce_low_balance(
            session,
            account_id=locked_wallet.account_id,
            balance_micros=balance_after_micros,
            threshold_micros=threshold,
            currency=locked_wallet.currency,
        )


def announce_low_balance(
    session: Session,
    *,
    account_id: str,
    balance_micros: int,
    threshold_micros: int,
    currency: str,
) -> None:
    """A debit crossed the threshold and disarmed the rule: tell the account and enqueue
    the top-up (once per crossing: the job's dedupe key)."""
    webhooks.emit(
        session,
        type="wallet.low_balance",
        account_id=account_id,
        data={
            "account_id": account_id,
            "balance": from_micros(balance_micros),
            "charge_threshold": from_micros(threshold_micros),
            "currency": currency,
        },
    )
    jobs.enqueue(
        session, kind=JOB_KIND, account_id=account_id, dedupe_key=f"auto_funding:{account_id}"
    )


def run_top_up(services: Services, job: ClaimedJob) -> None:
    """The job: charge the default card (a payment attempt keyed by the job, so a re-run
    job charges once); the attempt's handlers credit the wallet or count the decline."""
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
    with database.transaction() as session:
        attempt = attempts.begin(
            session,
            purpose=AttemptPurpose.AUTO_FUNDING,
            operation=f"job:{job.id}",
            account_id=account_id,
            amount_micros=amount,
            currency=currency,
            payment_method_id=card_id,
            payment_purpose="auto_funding",
        )
    attempts.run(database, processor, attempt, description="Wallet auto-funding")


@attempts.on_success(AttemptPurpose.AUTO_FUNDING).subscribe
def _on_top_up_paid(session: Session, event: attempts.Settled) -> str:
    payment = event.payment
    assert payment is not None
    txn = payments.credit_purchase(
        session,
        payment,
        kind="auto_funding",
        usecase="auto_funding",
        description="Wallet auto-funded by card"
        + (" (recorded after an interruption)" if event.recovered else ""),
        meta={"recovered": True} if event.recovered else None,
    )
    session.execute(
        update(Wallet)
        .where(Wallet.account_id == payment.account_id)
        .values(auto_funding_failures=0)
    )
    return txn.id


@attempts.on_failure(AttemptPurpose.AUTO_FUNDING).subscribe
def _on_top_up_failed(session: Session, event: attempts.Settled) -> None:
    account_id = event.attempt.account_id
    if event.reason == FailureReason.CARD_UNAVAILABLE:  # retrying would not help
        disable(
            session,
            account_id=account_id,
            reason="The default card is no longer available at the processor.",
        )
    elif event.reason == FailureReason.DECLINED:
        _count_decline(session, event)
    else:  # never charged: the next crossing of the threshold tries again
        session.execute(
            update(Wallet).where(Wallet.account_id == account_id).values(auto_funding_armed=True)
        )


def _count_decline(session: Session, event: attempts.Settled) -> None:
    """A declined top-up: recorded in the history, re-armed, and three in a row switch
    auto-funding off."""
    payment = event.payment
    assert payment is not None
    account_id, amount, currency = payment.account_id, payment.amount_micros, payment.currency
    wallet = ledger.lock_wallet(session, account_id)
    ledger.record_failed_attempt(
        session,
        account_id=account_id,
        kind="auto_funding",
        amount_micros=amount,
        balance_micros=wallet.balance_micros,
        description=f"Auto-funding declined: {payment.failure_message}",
        payment_id=payment.id,
        meta={"decline_code": payment.decline_code},
    )
    failures = wallet.auto_funding_failures + 1
    values: dict[str, Any] = {"auto_funding_failures": failures, "auto_funding_armed": True}
    data = {
        "account_id": account_id,
        "amount": from_micros(amount),
        "currency": currency,
        "payment_intent_id": payment.id,
        "decline_code": payment.decline_code,
        "consecutive_failures": failures,
    }
    webhooks.emit(session, type="wallet.auto_funding_failed", account_id=account_id, data=data)
    if failures >= MAX_CONSECUTIVE_DECLINES:
        values["auto_funding_enabled"] = False
        values["auto_funding_disabled_reason"] = (
            f"Disabled after {failures} declined top-ups in a row (last: {payment.decline_code})."
        )
        webhooks.emit(
            session,
            type="wallet.auto_funding_disabled",
            account_id=account_id,
            data={**data, "reason": values["auto_funding_disabled_reason"]},
        )
    session.execute(update(Wallet).where(Wallet.account_id == account_id).values(**values))
