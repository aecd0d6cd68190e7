"""Wallet endpoints for agents, and usage charges for the operator's platform."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from billfold.api.deps import Agent, AgentCall, Operator, OperatorCall, ServicesDep, respond
from billfold.api.errors import request_id_of
from billfold.api.responses import ok
from billfold.api.routers.holds import admin_router as holds_admin_router
from billfold.api.routing import DecimalJSONRoute
from billfold.application.usecases import usage, wallet
from billfold.schemas import ERROR_RESPONSES, Envelope
from billfold.wallet.batch_schemas import UsageBatchOut, UsageBatchRequest
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
    TransactionType,
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
    return ok(wallet.balance(services, account_id=agent.account_id))


@router.put("/wallet/auto-funding", response_model=Envelope[AutoFundingOut])
def enable_auto_funding(
    body: AutoFundingRequest, agent: Agent, services: ServicesDep, call: AgentCall
) -> Response:
    """Charge the default card auto_charge_amount whenever a debit leaves the balance under
    charge_threshold (one top-up at a time; off after 3 declines in a row)."""
    return respond(
        wallet.enable_auto_funding(services, call=call, account_id=agent.account_id, body=body)
    )


@router.delete("/wallet/auto-funding", response_model=Envelope[AutoFundingOut])
def disable_auto_funding(agent: Agent, services: ServicesDep, call: AgentCall) -> Response:
    return respond(wallet.disable_auto_funding(services, call=call, account_id=agent.account_id))


@router.get("/wallet/transactions", response_model=Envelope[TransactionPage])
def wallet_transactions(
    agent: Agent,
    services: ServicesDep,
    type: TransactionType | None = Query(default=None),
    limit: int = Query(default=50, ge=1, le=200),
    offset: int = Query(default=0, ge=0, le=10_000_000),
) -> Response:
    """The wallet's ledger, newest first."""
    return ok(
        wallet.transactions(
            services, account_id=agent.account_id, type=type, limit=limit, offset=offset
        )
    )


@router.post("/wallet/fund", response_model=Envelope[FundOut], responses=PAYMENT_RESPONSES)
def fund_wallet(
    body: FundRequest, agent: Agent, services: ServicesDep, call: AgentCall
) -> Response:
    """Charge a card (the given one, or the default) and credit the wallet."""
    return respond(wallet.fund(services, call=call, account_id=agent.account_id, body=body))


@router.post(
    "/wallet/withdraw",
    response_model=Envelope[WithdrawOut],
    responses={402: {"description": "insufficient_funds: not that much purchased credit"}},
)
def withdraw(
    body: WithdrawRequest, agent: Agent, services: ServicesDep, call: AgentCall
) -> Response:
    """Refund purchased credit to the cards it came from, newest payment first."""
    return respond(wallet.withdraw(services, call=call, account_id=agent.account_id, body=body))


@admin_router.post(
    "/usage-charges",
    response_model=Envelope[UsageChargeOut],
    status_code=201,
    responses={402: {"description": "insufficient_funds: nothing was charged"}},
)
async def create_usage_charge(
    body: UsageChargeRequest, services: ServicesDep, call: OperatorCall
) -> Response:
    """Debit an account's wallet for usage (the platform's hot path)."""
    return respond(await usage.charge_usage_async(services, call=call, body=body))


@admin_router.post("/usage-charges/batch", response_model=Envelope[UsageBatchOut])
def create_usage_charge_batch(
    body: UsageBatchRequest, request: Request, services: ServicesDep
) -> Response:
    """Up to 1,000 usage charges in one transaction, each with its own `idempotency_key`
    and its own outcome (charged, replayed, insufficient_funds, invalid, refused): one
    refusal never fails its neighbours. The request as a whole takes no Idempotency-Key."""
    batch = usage.charge_usage_batch(
        services, charges=body.charges, request_id=request_id_of(request)
    )
    return Response(batch.render(), media_type="application/json")


@admin_router.get("/accounts/{account_id}/ledger-check", response_model=Envelope[LedgerCheckOut])
def ledger_check(account_id: str, services: ServicesDep) -> Response:
    """Compare the wallet's cached balances with the sums of its ledger postings."""
    return ok(wallet.ledger_check(services, account_id=account_id))


@admin_router.post(
    "/refunds",
    response_model=Envelope[OperatorRefundOut],
    status_code=201,
    responses={402: {"description": "insufficient_funds: the credit was already spent"}},
)
def refund_payment(
    body: OperatorRefundRequest, services: ServicesDep, call: OperatorCall
) -> Response:
    """Refund a card payment (whole or part); the money leaves the wallet's purchased credit."""
    return respond(wallet.refund_payment(services, call=call, body=body))


@admin_router.post(
    "/adjustments",
    response_model=Envelope[TransactionOut],
    status_code=201,
    responses={402: {"description": "insufficient_funds: a debit larger than the balance"}},
)
def create_adjustment(
    body: AdjustmentRequest, services: ServicesDep, call: OperatorCall
) -> Response:
    """Credit (as promotional credit) or debit a wallet by hand, with a reason."""
    return respond(wallet.adjust(services, call=call, body=body))


# Usage holds (reserve, then capture or release) sit with the usage charges they become.
admin_router.include_router(holds_admin_router)
