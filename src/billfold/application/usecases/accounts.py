"""Account use cases: an agent's login and logout; the operator's accounts (create, read,
suspend, reactivate) and the agent tokens it mints.

Test clocks: an account created with `test_clock_id` is born on that clock's time
(`application.testclock.open_account`). The other use cases run on whatever time their
caller set: HTTP sets the account's time in its dependencies (`api/deps.py`: the agent's
token, the `{account_id}` in an admin path); a front end without them wraps the call in
`application.testclock.on_account_clock(app, account_id)`.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from billfold.accounts import service
from billfold.accounts.models import Account
from billfold.accounts.schemas import (
    AccountOut,
    AccountPage,
    CreateAccountRequest,
    IssueTokenRequest,
    LoginRequest,
    RevokedTokenOut,
    TokenOut,
)
from billfold.application import testclock as test_clocks
from billfold.application.idempotent import Outcome, Reply
from billfold.application.usecases.base import Call, for_account, for_operator, unkeyed
from billfold.errors import ErrorCode, Unauthenticated
from billfold.services import Services


def _account_out(account: Account) -> AccountOut:
    return AccountOut.model_validate(account, from_attributes=True)


def _token_out(issued: service.IssuedToken) -> TokenOut:
    return TokenOut(
        access_token=issued.token,
        expires_at=issued.record.expires_at,
        account_id=issued.record.account_id,
    )


def login(app: Services, *, body: LoginRequest, client: str) -> Reply:
    """Exchange email and password for an agent access token. Throttled per email, per
    client address (`client`: the front end's name for where the attempt comes from) and
    per pair; never under an idempotency key (a replay would hand the token out again)."""

    def handler() -> Outcome:
        with app.database.transaction() as session:
            attempt = service.reserve_login_attempt(
                session, email=body.email, client=client, settings=app.settings
            )
        with app.database.read() as session:
            account = service.find_login_account(session, email=body.email, password=body.password)
        if account is None:
            raise Unauthenticated("Wrong email or password.", code=ErrorCode.INVALID_CREDENTIALS)
        with app.database.transaction() as session:
            service.login_succeeded(session, attempt)  # the right password is no failure
            issued = (
                service.issue_token(session, account_id=account.id, expires_in=body.expires_in)
                if account.status == "active"
                else None
            )
        if issued is None:
            raise Unauthenticated("This account is suspended.", code=ErrorCode.ACCOUNT_SUSPENDED)
        return 200, _token_out(issued)

    return unkeyed(app).phased(handler)


def revoke_token(app: Services, *, call: Call, account_id: str, token_id: str) -> Reply:
    """Revoke one of the account's tokens (HTTP: the one the request was made with)."""

    def handler(session: Session) -> Outcome:
        service.revoke_token(session, token_id=token_id)
        return 200, RevokedTokenOut(revoked=True)

    return for_account(app, call, account_id).atomic(handler)


def create_account(app: Services, *, call: Call, body: CreateAccountRequest) -> Reply:
    """Create an account with its empty wallet; in test mode, on a test clock if
    `test_clock_id` names one (the account then lives on the clock's time)."""

    def handler(session: Session) -> Outcome:
        account = test_clocks.open_account(
            app,
            session,
            email=body.email,
            password=body.password,
            currency=body.currency,
            test_clock_id=body.test_clock_id,
        )
        return 201, _account_out(account)

    return for_operator(app, call).atomic(handler)


def get_account(app: Services, *, account_id: str) -> AccountOut:
    with app.database.read() as session:
        return _account_out(service.get_account(session, account_id))


def list_accounts(
    app: Services,
    *,
    email: str | None = None,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> AccountPage:
    """The operator's accounts, newest first, optionally by part of the email or status."""
    with app.database.read() as session:
        items, total = service.list_accounts(
            session, email=email, status=status, limit=limit, offset=offset
        )
        return AccountPage(
            items=[_account_out(a) for a in items],
            total=total,
            limit=limit,
            offset=offset,
            has_more=offset + len(items) < total,
        )


def _set_status(app: Services, call: Call, account_id: str, status: str) -> Reply:
    def handler(session: Session) -> Outcome:
        return 200, _account_out(service.set_status(session, account_id=account_id, status=status))

    return for_operator(app, call).atomic(handler)


def suspend_account(app: Services, *, call: Call, account_id: str) -> Reply:
    """Suspend an account: its tokens stop working until it is reactivated."""
    return _set_status(app, call, account_id, "suspended")


def reactivate_account(app: Services, *, call: Call, account_id: str) -> Reply:
    return _set_status(app, call, account_id, "active")


def issue_token(
    app: Services, *, call: Call, account_id: str, body: IssueTokenRequest | None = None
) -> Reply:
    """Mint an agent access token for an account (shown once)."""
    expires_in = body.expires_in if body else "1_month"

    def handler(session: Session) -> Outcome:
        service.get_account(session, account_id)
        issued = service.issue_token(session, account_id=account_id, expires_in=expires_in)
        return 201, _token_out(issued)

    return for_operator(app, call).atomic(handler)
