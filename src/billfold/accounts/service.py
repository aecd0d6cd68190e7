"""Accounts, agent tokens and login."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from billfold.accounts.models import Account, AgentToken, RateLimitCounter
from billfold.clock import now
from billfold.db import insert_or_ignore
from billfold.errors import Conflict, NotFound, RateLimited, Unauthenticated
from billfold.ids import new_id
from billfold.security import hash_password, hash_secret, new_secret, verify_password
from billfold.wallet.models import Wallet

TOKEN_LIFETIMES: dict[str, timedelta | None] = {
    "1_week": timedelta(weeks=1),
    "1_month": timedelta(days=30),
    "3_months": timedelta(days=90),
    "never": None,
}


def normalize_email(email: str) -> str:
    return email.strip().lower()


def create_account(
    session: Session, *, email: str, password: str, currency: str = "USD"
) -> Account:
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
            "created_at": now(),
        },
        ["email"],
    )
    if not inserted:
        raise Conflict("An account with this email already exists.", code="account_exists")
    session.add(Wallet(account_id=account_id, currency=currency))
    account = session.get(Account, account_id)
    assert account is not None
    return account


def get_account(session: Session, account_id: str) -> Account:
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound("No such account.")
    return account


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
    issued_at = now()
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


def authenticate_token(session: Session, token: str) -> AgentContext:
    """The account behind a bearer token; 401 if unknown, expired, revoked or suspended."""
    row = session.execute(
        select(AgentToken, Account)
        .join(Account, Account.id == AgentToken.account_id)
        .where(AgentToken.token_hash == hash_secret(token))
    ).first()
    if row is None:
        raise Unauthenticated("Invalid access token.")
    record, account = row
    if record.revoked_at is not None:
        raise Unauthenticated("This access token has been revoked.", code="token_revoked")
    if record.expires_at is not None and record.expires_at <= now():
        raise Unauthenticated("This access token has expired.", code="token_expired")
    if account.status != "active":
        raise Unauthenticated("This account is suspended.", code="account_suspended")
    return AgentContext(account_id=account.id, token_id=record.id, currency=account.currency)


def revoke_token(session: Session, *, token_id: str) -> None:
    session.execute(
        update(AgentToken)
        .where(AgentToken.id == token_id, AgentToken.revoked_at.is_(None))
        .values(revoked_at=now())
    )


def _window_start(at: datetime, window_seconds: int) -> datetime:
    epoch = int(at.timestamp())
    return datetime.fromtimestamp(epoch - epoch % window_seconds, tz=at.tzinfo)


def check_login_allowed(session: Session, *, keys: dict[str, int], window_seconds: int) -> None:
    """Raise RateLimited if any key already has its allowed failures in this window."""
    current = now()
    start = _window_start(current, window_seconds)
    counts = dict(
        session.execute(
            select(RateLimitCounter.key, RateLimitCounter.count).where(
                RateLimitCounter.key.in_(list(keys)), RateLimitCounter.window_start == start
            )
        ).all()
    )
    if any(counts.get(key, 0) >= limit for key, limit in keys.items()):
        retry_after = int((start + timedelta(seconds=window_seconds) - current).total_seconds()) + 1
        raise RateLimited(
            "Too many failed login attempts; try again later.",
            details={"retry_after_seconds": retry_after},
            headers={"Retry-After": str(retry_after)},
        )


def record_login_failure(session: Session, *, keys: list[str], window_seconds: int) -> None:
    start = _window_start(now(), window_seconds)
    for key in keys:
        insert_or_ignore(
            session,
            RateLimitCounter,
            {"key": key, "window_start": start, "count": 0},
            ["key", "window_start"],
        )
        session.execute(
            update(RateLimitCounter)
            .where(RateLimitCounter.key == key, RateLimitCounter.window_start == start)
            .values(count=RateLimitCounter.count + 1)
        )


def find_login_account(session: Session, *, email: str, password: str) -> Account | None:
    account = session.scalars(
        select(Account).where(Account.email == normalize_email(email))
    ).one_or_none()
    if not verify_password(password, account.password_hash if account else None):
        return None
    return account
