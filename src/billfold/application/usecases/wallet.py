"""Wallet use cases: the balance and its ledger, card funding and withdrawals, auto-funding,
and the operator's usage charges, refunds, adjustments and ledger check."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billfold.application.idempotent import Outcome, Reply
from billfold.application.usecases.base import Call, for_account, for_operator
from billfold.checkout import service as checkout
from billfold.errors import ErrorCode, PaymentFailed
from billfold.ledger.models import BUCKETS, Wallet
from billfold.ledger.service import (
    HOLDS_USAGE,
    all_ledger_balances,
    ledger_balances,
    unbalanced_transactions,
    wallet_consistent,
)
from billfold.money import from_micros, to_micros
from billfold.services import Services
from billfold.wallet import auto_funding, funding, refunds, service
from billfold.wallet.models import HELD_SQL, UsageHold
from billfold.wallet.schemas import (
    AdjustmentRequest,
    AutoFundingOut,
    AutoFundingRequest,
    BalanceOut,
    FundOut,
    FundRequest,
    LedgerAuditOut,
    LedgerCheckOut,
    LedgerProblemOut,
    OperatorRefundOut,
    OperatorRefundRequest,
    RefundOut,
    TransactionOut,
    TransactionPage,
    TransactionType,
    WalletSummary,
    WithdrawOut,
    WithdrawRequest,
)


def balance(app: Services, *, account_id: str) -> BalanceOut:
    with app.database.read() as session:
        wallet = service.get_wallet(session, account_id)
        return BalanceOut.model_validate(service.balance_view(session, wallet))


def transactions(
    app: Services,
    *,
    account_id: str,
    type: TransactionType | None = None,
    limit: int = 50,
    offset: int = 0,
) -> TransactionPage:
    """The wallet's ledger, newest first."""
    with app.database.read() as session:
        items, total = service.list_transactions(
            session, account_id=account_id, type=type, limit=limit, offset=offset
        )
        wallet = service.get_wallet(session, account_id)
        return TransactionPage(
            items=[TransactionOut.model_validate(service.transaction_view(t)) for t in items],
            wallet=WalletSummary(
                balance=from_micros(wallet.balance_micros), currency=wallet.currency
            ),
            total=total,
            limit=limit,
            offset=offset,
            has_more=offset + len(items) < total,
        )


def enable_auto_funding(
    app: Services, *, call: Call, account_id: str, body: AutoFundingRequest
) -> Reply:
    def handler(session: Session) -> Outcome:
        wallet = auto_funding.enable(
            session,
            account_id=account_id,
            auto_charge_amount_micros=to_micros(body.auto_charge_amount),
            charge_threshold_micros=to_micros(body.charge_threshold),
        )
        return 200, AutoFundingOut.model_validate(auto_funding.state_view(wallet))

    return for_account(app, call, account_id).atomic(handler)


def disable_auto_funding(app: Services, *, call: Call, account_id: str) -> Reply:
    def handler(session: Session) -> Outcome:
        wallet = auto_funding.disable(session, account_id=account_id)
        return 200, AutoFundingOut.model_validate(auto_funding.state_view(wallet))

    return for_account(app, call, account_id).atomic(handler)


def fund(app: Services, *, call: Call, account_id: str, body: FundRequest) -> Reply:
    """Charge a card (the given one, or the default) and credit the wallet."""

    amount_micros = to_micros(body.amount)

    def handler() -> Outcome:
        funded = fund_by_card(
            app,
            account_id=account_id,
            amount_micros=amount_micros,
            payment_method_id=body.payment_method_id,
            idempotency_key=call.key,
        )
        payment = funded.payment
        return 200, FundOut(
            payment_intent_id=payment.id,
            status=payment.status,
            amount=from_micros(payment.amount_micros),
            currency=payment.currency,
            payment_method_id=payment.payment_method_id,
            transaction_id=funded.transaction_id,
            balance=from_micros(funded.wallet.balance_micros),
        )

    return for_account(app, call, account_id).phased(handler)


def fund_by_card(
    app: Services,
    *,
    account_id: str,
    amount_micros: int,
    payment_method_id: str | None,
    idempotency_key: str | None,
    purpose: str = "wallet_funding",
) -> funding.Funded:
    """Charge a card for wallet credit (`funding.fund_wallet`); a charge the cardholder
    must authenticate answers 402 `authentication_required` with a payment link."""
    try:
        return funding.fund_wallet(
            app.database,
            app.processor,
            account_id=account_id,
            amount_micros=amount_micros,
            payment_method_id=payment_method_id,
            idempotency_key=idempotency_key,
            purpose=purpose,
        )
    except PaymentFailed as declined:
        raise _authentication_link(app, declined, account_id, amount_micros) from None


def _authentication_link(
    app: Services, declined: PaymentFailed, account_id: str, amount_micros: int
) -> PaymentFailed:
    """A charge the cardholder must authenticate (3-D Secure) becomes 402
    `authentication_required` carrying a payment link for the same amount, which the human
    pays (and authenticates) on the payment page; any other decline stays as it is."""
    if declined.decline_code != "authentication_required":
        return declined
    with app.database.transaction() as session:
        link = checkout.create(
            session,
            account_id=account_id,
            purpose="fund",
            amount_micros=amount_micros,
            ttl=timedelta(minutes=app.settings.payment_link_ttl_minutes),
        )
    needs_you = PaymentFailed(
        "The card needs its holder to authenticate this payment, which cannot be done "
        "off-session; nothing was charged. Send payment_url to the human to pay it.",
        decline_code=declined.decline_code,
        payment=declined.payment,
        code=ErrorCode.AUTHENTICATION_REQUIRED,
    )
    needs_you.details.update(
        payment_url=f"{app.settings.public_url.rstrip('/')}/pay/{link.id}",
        session_id=link.id,
        expires_at=link.expires_at.isoformat(),
    )
    return needs_you


def withdraw(app: Services, *, call: Call, account_id: str, body: WithdrawRequest) -> Reply:
    """Refund purchased credit to the cards it came from, newest payment first."""

    def handler() -> Outcome:
        result = refunds.withdraw(
            app.database,
            app.processor,
            account_id=account_id,
            amount_micros=to_micros(body.amount),
        )
        return 200, WithdrawOut(
            withdrawal_id=result.id,
            amount=from_micros(result.amount_micros),
            balance=from_micros(result.wallet.balance_micros),
            currency=result.wallet.currency,
            refunds=[RefundOut.model_validate(refunds.refund_view(r)) for r in result.refunds],
        )

    return for_account(app, call, account_id).phased(handler)


def ledger_check(app: Services, *, account_id: str) -> LedgerCheckOut:
    """Compare the wallet's cached balances with the sums of its ledger postings."""
    with app.database.read() as session:
        wallet = service.get_wallet(session, account_id)
        sums = ledger_balances(session, account_id)
    cached = {bucket: getattr(wallet, f"{bucket}_micros") for bucket in BUCKETS}
    cached["balance"] = wallet.balance_micros
    return LedgerCheckOut(
        account_id=account_id,
        cached={k: from_micros(v) for k, v in cached.items()},
        postings={k: from_micros(v) for k, v in sums.items()},
        consistent=wallet_consistent(cached, sums),
    )


def audit_ledger(app: Services) -> LedgerAuditOut:
    """The whole ledger checked at once (after a restore, or an incident): every wallet's
    cached balances against its postings, every transaction's postings summing to zero,
    and every account's `holds:usage` equal to its active holds. Read in one snapshot:
    REPEATABLE READ on PostgreSQL (a write committed between two of its queries would
    otherwise look like an inconsistency); SQLite's read transaction is one already."""
    with app.database.read() as session:
        if not app.database.is_sqlite:
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        sums = all_ledger_balances(session)
        wallets = session.execute(
            select(
                Wallet.account_id,
                Wallet.subscription_micros,
                Wallet.promotional_micros,
                Wallet.purchased_micros,
                Wallet.balance_micros,
            )
        ).all()
        unbalanced = unbalanced_transactions(session)
        held = dict(
            session.execute(
                select(UsageHold.account_id, func.sum(UsageHold.amount_micros))
                .where(UsageHold.status == HELD_SQL)
                .group_by(UsageHold.account_id)
            ).all()
        )
    problems: list[LedgerProblemOut] = []
    for account_id, subscription, promotional, purchased, balance in wallets:
        cached = {
            "subscription": subscription,
            "promotional": promotional,
            "purchased": purchased,
            "balance": balance,
        }
        postings = sums.get(account_id, {})
        if not wallet_consistent(cached, postings):
            problems.append(
                LedgerProblemOut(
                    account_id=account_id,
                    problem="the wallet's cached balances differ from its postings",
                )
            )
        if postings.get(HOLDS_USAGE, 0) != int(held.get(account_id) or 0):
            problems.append(
                LedgerProblemOut(
                    account_id=account_id,
                    problem="holds:usage differs from the sum of its active holds",
                )
            )
    for transaction_id in unbalanced:
        problems.append(
            LedgerProblemOut(
                transaction_id=transaction_id, problem="the postings do not sum to zero"
            )
        )
    return LedgerAuditOut(
        accounts=len(wallets),
        transactions_unbalanced=len(unbalanced),
        consistent=not problems,
        problems=problems,
    )


def refund_payment(app: Services, *, call: Call, body: OperatorRefundRequest) -> Reply:
    """Refund a card payment (whole or part); the money leaves the wallet's purchased credit."""

    def handler() -> Outcome:
        result = refunds.refund_payment(
            app.database,
            app.processor,
            payment_intent_id=body.payment_intent_id,
            amount_micros=to_micros(body.amount) if body.amount is not None else None,
            reason="operator_refund",
        )
        return 201, OperatorRefundOut(
            id=result.id,
            amount=from_micros(result.amount_micros),
            reason=body.reason,
            balance=from_micros(result.wallet.balance_micros),
            refunds=[RefundOut.model_validate(refunds.refund_view(r)) for r in result.refunds],
        )

    return for_operator(app, call).phased(handler)


def adjust(app: Services, *, call: Call, body: AdjustmentRequest) -> Reply:
    """Credit (as promotional credit) or debit a wallet by hand, with a reason."""

    def handler(session: Session) -> Outcome:
        txn = service.adjust(
            session,
            account_id=body.account_id,
            amount_micros=to_micros(body.amount),
            reason=body.reason,
        )
        return 201, TransactionOut.model_validate(service.transaction_view(txn))

    return for_operator(app, call).atomic(handler)
