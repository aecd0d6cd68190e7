"""Operator keys: create (the key is shown once), list, revoke, and find by key.

A key carries scopes; a request to an operator endpoint needs the endpoint's scope or
`admin` (every scope). The bootstrap admin key (BILLFOLD_ADMIN_KEY, and during a rotation
BILLFOLD_ADMIN_KEY_PREVIOUS) has `admin`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from billfold.clock import wall_now
from billfold.errors import ErrorCode, InvalidRequest, NotFound
from billfold.ids import new_id
from billfold.operator_keys.models import OperatorKey
from billfold.security import hash_secret, new_secret

ADMIN = "admin"
# What a key may be allowed to do (`admin`: everything, including managing keys).
SCOPES = (
    "usage:write",
    "accounts",
    "plans",
    "coupons",
    "refunds",
    "webhooks",
    "test-clocks",
    ADMIN,
)
KEY_PREFIX = "bfo_"


@dataclass(frozen=True)
class Created:
    key: OperatorKey
    secret: str  # the key itself: shown once, never stored


def create(session: Session, *, name: str, scopes: Iterable[str]) -> Created:
    wanted = sorted(set(scopes))
    unknown = [scope for scope in wanted if scope not in SCOPES]
    if unknown or not wanted:
        problem = f"Unknown scope(s): {', '.join(unknown)}." if unknown else "No scope named."
        raise InvalidRequest(f"{problem} Scopes: {', '.join(SCOPES)}.", details={"field": "scopes"})
    secret = new_secret(KEY_PREFIX.removesuffix("_"))
    key = OperatorKey(
        id=new_id("opk"),
        name=name,
        key_hash=hash_secret(secret),
        key_prefix=secret[:12],
        scopes=wanted,
        created_at=wall_now(),
    )
    session.add(key)
    session.flush()
    return Created(key, secret)


def list_keys(session: Session, *, include_revoked: bool = False) -> list[OperatorKey]:
    query = select(OperatorKey).order_by(OperatorKey.created_at, OperatorKey.id)
    if not include_revoked:
        query = query.where(OperatorKey.revoked_at.is_(None))
    return list(session.scalars(query))


def revoke(session: Session, key_id: str) -> OperatorKey:
    """Revoke a key (once; revoking it again changes nothing); 404 if there is none."""
    session.execute(
        update(OperatorKey)
        .where(OperatorKey.id == key_id, OperatorKey.revoked_at.is_(None))
        .values(revoked_at=wall_now())
    )
    key = session.get(OperatorKey, key_id, populate_existing=True)
    if key is None:
        raise NotFound(
            "No such operator key.",
            code=ErrorCode.OPERATOR_KEY_NOT_FOUND,
            details={"key_id": key_id},
        )
    return key


def scopes_of(session: Session, secret: str) -> frozenset[str] | None:
    """The scopes of an active key, None if `secret` is no active key."""
    if not secret.startswith(KEY_PREFIX):
        return None
    row = session.execute(
        select(OperatorKey.scopes).where(
            OperatorKey.key_hash == hash_secret(secret), OperatorKey.revoked_at.is_(None)
        )
    ).first()
    return frozenset(row[0]) if row is not None else None
