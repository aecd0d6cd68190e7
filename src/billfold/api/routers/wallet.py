"""Wallet endpoints for agents, and usage charges for the operator's platform."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from sqlalchemy.orm import Session

from billfold.api.deps import (
    Agent,
    AgentIdempotent,
    Operator,
    OperatorIdempotent,
    Outcome,
    ServicesDep,
)
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.ledger.models import BUCKETS
from billfold.ledger.service import ledger_balances
from billfold.money import from_micros, to_micros
from billfold.schemas import ERROR_RESPONSES, Envelope
from billfold.wallet import auto_funding, service
from billfold.wallet.schemas import (
    AdjustmentRequest,
    AutoFundingOut,
    AutoFundingRequest,
    BalanceOut,
    FundOut,
    FundRequest,
    LedgerCheckOut,
    OperatorRefundOut,
    OperatorRefundRequest,
    TransactionOut,
    TransactionPage,
    UsageChargeOut,
    UsageChargeRequest,
    WithdrawOut,
    WithdrawRequest,
)

router = APIRouter(route_class=DecimalJSONRoute, tags=["wallet"], responses=ERROR_RESPONSES)
admin_router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["usage"],
    dependencies=[Operator],
    responses=ERROR_RESPONSES,
)

PAYMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    402: {"description": "The card was declined (data holds the payment)"}
}


@router.get("/wallet/balance", response_model=Envelope[BalanceOut])
def wallet_balance(agent: Agent, services: ServicesDep) -> Response:
    with services.database.read() as session:
        return ok(service.balance_view(session, service.get_wallet(session, agent.account_id)))


@router.put("/wallet/auto-funding", response_model=Envelope[AutoFundingOut])
def enable_auto_funding(body: AutoFundingRequest, agent: Agent, idem: AgentIdempotent) -> Response:
    """Charge the default card auto_charge_amount whenever a debit leaves the balance under
    charge_threshold (one top-up at a time; off after 3 declines in a row)."""

    def handler(session: Session) -> Outcome:
        wallet = auto_funding.enable(
            session,
            account_id=agent.account_id,
            auto_charge_amount_micros=to_micros(body.auto_charge_amount),
            charge_threshold_micros=to_micros(body.charge_threshold),
        )
        return 200, auto_funding.state_view(wallet)

    return idem.atomic(handler)


@router.delete("/wallet/auto-funding", response_model=Envelope[AutoFundingOut])
def disable_auto_funding(agent: Agent, idem: AgentIdempotent) -> Response:
    def handler(session: Session) -> Outcome:
        wallet = auto_funding.disable(session, account_id=agent.account_id)
        return 200, auto_funding.state_view(wallet)

    return idem.atomic(handler)


@router.get("/wallet/transactions", response_model=Envelope[TransactionPage])
def wallet_transactions(
    agent: Agent,
    services: ServicesDep,
    type: Literal["credit", "debit"] | None = Query(default=None),
    limit: int = Query(default=50, ge=1, le=200),
    offset: int = Query(default=0, ge=0, le=10_000_000),
) -> Response:
    """The wallet's ledger, newest first."""
    with services.database.read() as session:
        items, total = service.list_transactions(
            session, account_id=agent.account_id, type=type, limit=limit, offset=offset
        )
        wallet = service.get_wallet(session, agent.account_id)
        return ok(
            {
                "items": [service.transaction_view(t) for t in items],
                "wallet": {
                    "balance": from_micros(wallet.balance_micros),
                    "currency": wallet.currency,
                },
                "total": total,
                "limit": limit,
                "offset": offset,
                "has_more": offset + len(items) < total,
            }
        )


@router.post("/wallet/fund", response_model=Envelope[FundOut], responses=PAYMENT_RESPONSES)
def fund_wallet(
    body: FundRequest, agent: Agent, services: ServicesDep, idem: AgentIdempotent
) -> Response:
    """Charge a card (the given one, or the default) and credit the wallet."""

    def handler() -> Outcome:
        funded = service.fund_wallet(
            services.database,
            services.processor,
            account_id=agent.account_id,
            amount_micros=to_micros(body.amount),
            payment_method_id=body.payment_method_id,
            idempotency_key=idem.key,
        )
        payment = funded.payment
        return 200, {
            "payment_intent_id": payment.id,
            "status": payment.status,
            "amount": from_micros(payment.amount_micros),
            "currency": payment.currency,
            "payment_method_id": payment.payment_method_id,
            "transaction_id": funded.transaction_id,
            "balance": from_micros(funded.wallet.balance_micros),
        }

    return idem.phased(handler)


@router.post(
    "/wallet/withdraw",
    response_model=Envelope[WithdrawOut],
    responses={402: {"description": "insufficient_funds: not that much purchased credit"}},
)
def withdraw(
    body: WithdrawRequest, agent: Agent, services: ServicesDep, idem: AgentIdempotent
) -> Response:
    """Refund purchased credit to the cards it came from, newest payment first."""

    def handler() -> Outcome:
        result = service.withdraw(
            services.database,
            services.processor,
            account_id=agent.account_id,
            amount_micros=to_micros(body.amount),
        )
        return 200, {
            "withdrawal_id": result.id,
            "amount": from_micros(result.amount_micros),
            "balance": from_micros(result.wallet.balance_micros),
            "currency": result.wallet.currency,
            "refunds": [service.refund_view(r) for r in result.refunds],
        }

    return idem.phased(handler)


@admin_router.post(
    "/usage-charges",
    response_model=Envelope[UsageChargeOut],
    status_code=201,
    responses={402: {"description": "insufficient_funds: nothing was charged"}},
)
def create_usage_charge(body: UsageChargeRequest, idem: OperatorIdempotent) -> Response:
    """Debit an account's wallet for usage (the platform's hot path)."""

    def handler(session: Session) -> Outcome:
        txn = service.charge_usage(
            session,
            account_id=body.account_id,
            amount_micros=to_micros(body.amount),
            usecase=body.usecase,
            description=body.description,
            metadata=body.metadata,
        )
        return 201, {
            "id": txn.id,
            "account_id": txn.account_id,
            "amount": from_micros(txn.amount_micros),
            "usecase": txn.usecase,
            "balance_after": from_micros(txn.balance_after_micros),
            "created_at": txn.created_at,
        }

    return idem.atomic(handler)


@admin_router.get("/accounts/{account_id}/ledger-check", response_model=Envelope[LedgerCheckOut])
def ledger_check(account_id: str, services: ServicesDep) -> Response:
    """Compare the wallet's cached balances with the sums of its ledger postings."""
    with services.database.read() as session:
        wallet = service.get_wallet(session, account_id)
        sums = ledger_balances(session, account_id)
    cached = {bucket: getattr(wallet, f"{bucket}_micros") for bucket in BUCKETS}
    cached["balance"] = wallet.balance_micros
    consistent = (
        all(sums.get(f"wallet:{b}", 0) == cached[b] for b in BUCKETS)
        and cached["balance"] == sum(cached[b] for b in BUCKETS)
        and sum(sums.values()) == 0
    )
    return ok(
        {
            "account_id": account_id,
            "cached": {k: from_micros(v) for k, v in cached.items()},
            "postings": {k: from_micros(v) for k, v in sums.items()},
            "consistent": consistent,
        }
    )


@admin_router.post(
    "/refunds",
    response_model=Envelope[OperatorRefundOut],
    status_code=201,
    responses={402: {"description": "insufficient_funds: the credit was already spent"}},
)
def refund_payment(
    body: OperatorRefundRequest, services: ServicesDep, idem: OperatorIdempotent
) -> Response:
    """Refund a card payment (whole or part); the money leaves the wallet's purchased credit."""

    def handler() -> Outcome:
        result = service.refund_payment(
            services.database,
            services.processor,
            payment_intent_id=body.payment_intent_id,
            amount_micros=to_micros(body.amount) if body.amount is not None else None,
            reason="operator_refund",
        )
        return 201, {
            "id": result.id,
            "amount": from_micros(result.amount_micros),
            "reason": body.reason,
            "balance": from_micros(result.wallet.balance_micros),
            "refunds": [service.refund_view(r) for r in result.refunds],
        }

    return idem.phased(handler)


@admin_router.post(
    "/adjustments",
    response_model=Envelope[TransactionOut],
    status_code=201,
    responses={402: {"description": "insufficient_funds: a debit larger than the balance"}},
)
def create_adjustment(body: AdjustmentRequest, idem: OperatorIdempotent) -> Response:
    """Credit (as promotional credit) or debit a wallet by hand, with a reason."""

    def handler(session: Session) -> Outcome:
        txn = service.adjust(
            session,
            account_id=body.account_id,
            amount_micros=to_micros(body.amount),
            reason=body.reason,
        )
        return 201, service.transaction_view(txn)

    return idem.atomic(handler)
