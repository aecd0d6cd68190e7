"""Accounts, agent tokens and login."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from billfold import ratelimit
from billfold.accounts.models import Account, AgentToken
from billfold.clock import ClockTime, now, wall_now
from billfold.config import Settings
from billfold.db import insert_or_ignore
from billfold.errors import Conflict, ErrorCode, NotFound, Unauthenticated
from billfold.ids import new_id
from billfold.ledger.models import Wallet
from billfold.security import hash_password, hash_secret, new_secret, verify_password
from billfold.testclock import service as testclock
from billfold.testclock.models import TestClock

TOKEN_LIFETIMES: dict[str, timedelta | None] = {
    "1_week": timedelta(weeks=1),
    "1_month": timedelta(days=30),
    "3_months": timedelta(days=90),
    "never": None,
}


def normalize_email(email: str) -> str:
    return email.strip().lower()


def create_account(
    session: Session,
    *,
    email: str,
    password: str,
    currency: str = "USD",
    test_clock_id: str | None = None,
) -> Account:
    """A new account with its empty wallet; on `test_clock_id`'s time if given (the caller
    checks the clock exists, and runs this on its time)."""
    email = normalize_email(email)
    account_id = new_id("acct")
    inserted = insert_or_ignore(
        session,
        Account,
        {
            "id": account_id,
            "email": email,
            "password_hash": hash_password(password),
            "status": "active",
            "currency": currency,
            "test_clock_id": test_clock_id,
            "created_at": now(),
        },
        ["email"],
    )
    if not inserted:
        raise Conflict("An account with this email already exists.", code=ErrorCode.ACCOUNT_EXISTS)
    session.add(Wallet(account_id=account_id, currency=currency))
    account = session.get(Account, account_id)
    assert account is not None
    return account


def get_account(session: Session, account_id: str) -> Account:
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound("No such account.", code=ErrorCode.ACCOUNT_NOT_FOUND)
    return account


def list_accounts(
    session: Session, *, email: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[Account], int]:
    """Accounts, newest first; `email` matches a part of the address (case-insensitive)."""
    query = select(Account)
    if email:
        query = query.where(func.lower(Account.email).contains(email.lower(), autoescape=True))
    if status:
        query = query.where(Account.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = query.order_by(Account.created_at.desc(), Account.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(page)), total


def set_status(session: Session, *, account_id: str, status: str) -> Account:
    account = get_account(session, account_id)
    account.status = status
    return account


@dataclass(frozen=True)
class IssuedToken:
    token: str
    record: AgentToken


def issue_token(session: Session, *, account_id: str, expires_in: str = "1_month") -> IssuedToken:
    token = new_secret("bf_at")
    lifetime = TOKEN_LIFETIMES[expires_in]
    issued_at = wall_now()  # token lifetimes are real time, whatever the account's clock
    record = AgentToken(
        id=new_id("tok"),
        account_id=account_id,
        token_hash=hash_secret(token),
        token_prefix=token[:12],
        created_at=issued_at,
        expires_at=issued_at + lifetime if lifetime else None,
    )
    session.add(record)
    return IssuedToken(token=token, record=record)


@dataclass(frozen=True)
class AgentContext:
    account_id: str
    token_id: str
    currency: str
    # The account's test clock as of authentication (None: the account lives on real time).
    clock: ClockTime | None = None


def clock_id_of(session: Session, account_id: str) -> tuple[bool, str | None]:
    """Whether the account exists, and the test clock it lives on (fixed at its creation:
    nothing moves an account to another clock, and clocks are never deleted)."""
    row = session.execute(select(Account.test_clock_id).where(Account.id == account_id)).first()
    return (False, None) if row is None else (True, row[0])


def authenticate_token(session: Session, token: str) -> AgentContext:
    """The account behind a bearer token; 401 if unknown, expired, revoked or suspended.
    Expiry is judged on real time."""
    row = session.execute(
        select(AgentToken, Account, TestClock)
        .join(Account, Account.id == AgentToken.account_id)
        .outerjoin(TestClock, TestClock.id == Account.test_clock_id)
        .where(AgentToken.token_hash == hash_secret(token))
    ).first()
    if row is None:
        raise Unauthenticated("Invalid access token.")
    record, account, test_clock = row
    if record.revoked_at is not None:
        raise Unauthenticated("This access token has been revoked.", code=ErrorCode.TOKEN_REVOKED)
    if record.expires_at is not None and record.expires_at <= wall_now():
        raise Unauthenticated("This access token has expired.", code=ErrorCode.TOKEN_EXPIRED)
    if account.status != "active":
        raise Unauthenticated("This account is suspended.", code=ErrorCode.ACCOUNT_SUSPENDED)
    return AgentContext(
        account_id=account.id,
        token_id=record.id,
        currency=account.currency,
        clock=testclock.time_of(test_clock) if test_clock is not None else None,
    )


def revoke_token(session: Session, *, token_id: str) -> None:
    session.execute(
        update(AgentToken)
        .where(AgentToken.id == token_id, AgentToken.revoked_at.is_(None))
        .values(revoked_at=wall_now())
    )


def _pair_key(email: str, client: str) -> str:
    return f"login:email_client:{normalize_email(email)}|{client}"


def login_limits(*, email: str, client: str, settings: Settings) -> list[ratelimit.Limit]:
    """The failure budgets a login attempt draws on (the README's login throttling).

    One email from one client address gets few tries; one email from all addresses gets
    more (distributed guessing), and one address over all emails too (password spraying).
    """
    window = settings.login_window_seconds
    email = normalize_email(email)
    return [
        ratelimit.Limit(
            _pair_key(email, client), settings.login_max_failures_per_email_client, window
        ),
        ratelimit.Limit(f"login:email:{email}", settings.login_max_failures_per_email, window),
        ratelimit.Limit(f"login:client:{client}", settings.login_max_failures_per_client, window),
    ]


@dataclass(frozen=True)
class LoginAttempt:
    """A login attempt counted against its budgets before its password is checked."""

    pair_key: str
    taken: list[ratelimit.Taken]


def reserve_login_attempt(
    session: Session, *, email: str, client: str, settings: Settings
) -> LoginAttempt:
    """Count the attempt as a failure before the password is checked (429 if over budget).

    Counting first, in its own committed transaction, is what bounds the slow password
    checks: concurrent wrong guesses cannot all pass a check made before any is counted.
    """
    taken = ratelimit.take(
        session,
        login_limits(email=email, client=client, settings=settings),
        message="Too many failed login attempts; try again later.",
    )
    return LoginAttempt(pair_key=ratelimit.stored_key(_pair_key(email, client)), taken=taken)


def login_succeeded(session: Session, attempt: LoginAttempt) -> None:
    """The right password: the attempt was no failure, and this client's failures for this
    email are forgiven (a real user's typos do not add up across successful logins)."""
    ratelimit.give_back(session, [t for t in attempt.taken if t.key != attempt.pair_key])
    for item in attempt.taken:
        if item.key == attempt.pair_key:
            ratelimit.clear(session, item)


def find_login_account(session: Session, *, email: str, password: str) -> Account | None:
    account = session.scalars(
        select(Account).where(Account.email == normalize_email(email))
    ).one_or_none()
    if not verify_password(password, account.password_hash if account else None):
        return None
    return account
