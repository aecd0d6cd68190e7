"""Login and token revocation for agents; account and token management for the operator."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from billfold.accounts import service
from billfold.accounts.models import Account
from billfold.accounts.schemas import (
    AccountOut,
    CreateAccountRequest,
    IssueTokenRequest,
    LoginRequest,
    TokenOut,
)
from billfold.api.deps import (
    Agent,
    Operator,
    OperatorIdempotent,
    Outcome,
    ServicesDep,
    client_address,
)
from billfold.api.responses import ok
from billfold.api.routing import DecimalJSONRoute
from billfold.application import testclock as test_clocks
from billfold.errors import ErrorCode, Unauthenticated
from billfold.schemas import ERROR_RESPONSES, Envelope, ErrorEnvelope

agent_router = APIRouter(route_class=DecimalJSONRoute, tags=["auth"], responses=ERROR_RESPONSES)
admin_router = APIRouter(
    route_class=DecimalJSONRoute,
    tags=["accounts"],
    dependencies=[Operator],
    responses=ERROR_RESPONSES,
)
SANDBOX_ONLY_RESPONSE: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorEnvelope, "description": "test_clock_unavailable: not in sandbox mode"}
}


def _account_out(account: Account) -> AccountOut:
    return AccountOut.model_validate(account, from_attributes=True)


def _token_out(issued: service.IssuedToken) -> TokenOut:
    return TokenOut(
        access_token=issued.token,
        expires_at=issued.record.expires_at,
        account_id=issued.record.account_id,
    )


@agent_router.post(
    "/auth/login",
    response_model=Envelope[TokenOut],
    responses={429: {"description": "Too many failed logins for this email or address"}},
)
def login(body: LoginRequest, request: Request, services: ServicesDep) -> Response:
    """Exchange email and password for an agent access token."""
    with services.database.transaction() as session:
        attempt = service.reserve_login_attempt(
            session, email=body.email, client=client_address(request), settings=services.settings
        )
    with services.database.read() as session:
        account = service.find_login_account(session, email=body.email, password=body.password)
    if account is None:
        raise Unauthenticated("Wrong email or password.", code=ErrorCode.INVALID_CREDENTIALS)
    with services.database.transaction() as session:
        service.login_succeeded(session, attempt)  # the right password is no failure
        issued = (
            service.issue_token(session, account_id=account.id, expires_in=body.expires_in)
            if account.status == "active"
            else None
        )
    if issued is None:
        raise Unauthenticated("This account is suspended.", code=ErrorCode.ACCOUNT_SUSPENDED)
    return ok(_token_out(issued))


@agent_router.delete("/auth/tokens/current", response_model=Envelope[dict[str, bool]])
def revoke_current_token(agent: Agent, services: ServicesDep) -> Response:
    """Revoke the token this request was made with."""
    with services.database.transaction() as session:
        service.revoke_token(session, token_id=agent.token_id)
    return ok({"revoked": True})


@admin_router.post(
    "/accounts",
    response_model=Envelope[AccountOut],
    status_code=201,
    responses=SANDBOX_ONLY_RESPONSE,
)
def create_account(
    body: CreateAccountRequest, services: ServicesDep, idem: OperatorIdempotent
) -> Response:
    """Create an account with its empty wallet; in sandbox mode, on a test clock if
    `test_clock_id` names one (the account then lives on the clock's time)."""

    def handler(session: Session) -> Outcome:
        account = test_clocks.open_account(
            services,
            session,
            email=body.email,
            password=body.password,
            currency=body.currency,
            test_clock_id=body.test_clock_id,
        )
        return 201, _account_out(account)

    return idem.atomic(handler)


@admin_router.get("/accounts/{account_id}", response_model=Envelope[AccountOut])
def get_account(account_id: str, services: ServicesDep) -> Response:
    with services.database.read() as session:
        return ok(_account_out(service.get_account(session, account_id)))


@admin_router.post("/accounts/{account_id}/suspend", response_model=Envelope[AccountOut])
def suspend_account(account_id: str, services: ServicesDep) -> Response:
    """Suspend an account: its tokens stop working until it is reactivated."""
    with services.database.transaction() as session:
        return ok(
            _account_out(service.set_status(session, account_id=account_id, status="suspended"))
        )


@admin_router.post("/accounts/{account_id}/reactivate", response_model=Envelope[AccountOut])
def reactivate_account(account_id: str, services: ServicesDep) -> Response:
    with services.database.transaction() as session:
        return ok(_account_out(service.set_status(session, account_id=account_id, status="active")))


@admin_router.post(
    "/accounts/{account_id}/tokens", response_model=Envelope[TokenOut], status_code=201
)
def issue_agent_token(
    account_id: str, services: ServicesDep, body: IssueTokenRequest | None = None
) -> Response:
    """Mint an agent access token for an account (shown once)."""
    expires_in = body.expires_in if body else "1_month"
    with services.database.transaction() as session:
        service.get_account(session, account_id)
        issued = service.issue_token(session, account_id=account_id, expires_in=expires_in)
    return ok(_token_out(issued), status_code=201)
