"""Login and token revocation for agents; account and token management for the operator."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from billfold.accounts.schemas import (
    AccountOut,
    AccountPage,
    CreateAccountRequest,
    IssueTokenRequest,
    LoginRequest,
    RevokedTokenOut,
    TokenOut,
)
from billfold.api.deps import (
    Agent,
    Call,
    Operator,
    OperatorCall,
    ServicesDep,
    client_address,
    respond,
)
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application.usecases import accounts
from billfold.schemas import ERROR_RESPONSES, Envelope, ErrorEnvelope

agent_router = APIRouter(route_class=DecimalJSONRoute, tags=["auth"], responses=ERROR_RESPONSES)
admin_router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["accounts"],
    dependencies=[Operator],
    responses=ERROR_RESPONSES,
)
SANDBOX_ONLY_RESPONSE: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorEnvelope, "description": "test_clock_unavailable: not in test mode"}
}


@agent_router.post(
    "/auth/login",
    response_model=Envelope[TokenOut],
    responses={429: {"description": "Too many failed logins for this email or address"}},
)
def login(body: LoginRequest, request: Request, services: ServicesDep) -> Response:
    """Exchange email and password for an agent access token."""
    return respond(accounts.login(services, body=body, client=client_address(request)))


@agent_router.delete("/auth/tokens/current", response_model=Envelope[RevokedTokenOut])
def revoke_current_token(agent: Agent, services: ServicesDep) -> Response:
    """Revoke the token this request was made with."""
    return respond(
        accounts.revoke_token(
            services, call=Call(), account_id=agent.account_id, token_id=agent.token_id
        )
    )


@admin_router.post(
    "/accounts",
    response_model=Envelope[AccountOut],
    status_code=201,
    responses=SANDBOX_ONLY_RESPONSE,
)
def create_account(
    body: CreateAccountRequest, services: ServicesDep, call: OperatorCall
) -> Response:
    """Create an account with its empty wallet; in test mode, on a test clock if
    `test_clock_id` names one (the account then lives on the clock's time)."""
    return respond(accounts.create_account(services, call=call, body=body))


@admin_router.get("/accounts", response_model=Envelope[AccountPage])
def list_accounts(
    services: ServicesDep,
    email: str | None = Query(default=None, max_length=320, description="Part of the email"),
    status: Literal["active", "suspended"] | None = None,
    limit: int = Query(default=50, ge=1, le=200),
    offset: int = Query(default=0, ge=0, le=10_000_000),
) -> Response:
    """Accounts, newest first."""
    return ok(
        accounts.list_accounts(services, email=email, status=status, limit=limit, offset=offset)
    )


@admin_router.get("/accounts/{account_id}", response_model=Envelope[AccountOut])
def get_account(account_id: str, services: ServicesDep) -> Response:
    return ok(accounts.get_account(services, account_id=account_id))


@admin_router.post("/accounts/{account_id}/suspend", response_model=Envelope[AccountOut])
def suspend_account(account_id: str, services: ServicesDep) -> Response:
    """Suspend an account: its tokens stop working until it is reactivated."""
    return respond(accounts.suspend_account(services, call=Call(), account_id=account_id))


@admin_router.post("/accounts/{account_id}/reactivate", response_model=Envelope[AccountOut])
def reactivate_account(account_id: str, services: ServicesDep) -> Response:
    return respond(accounts.reactivate_account(services, call=Call(), account_id=account_id))


@admin_router.post(
    "/accounts/{account_id}/tokens", response_model=Envelope[TokenOut], status_code=201
)
def issue_agent_token(
    account_id: str, services: ServicesDep, body: IssueTokenRequest | None = None
) -> Response:
    """Mint an agent access token for an account (shown once)."""
    return respond(accounts.issue_token(services, call=Call(), account_id=account_id, body=body))
