"""Idempotency-Key handling (IETF httpapi Idempotency-Key draft, Stripe's semantics).

A key is claimed by inserting its row; the primary key (scope, key) decides between
concurrent requests, never a check-then-insert. The stored outcome is replayed for
the same payload; a different payload is refused; a request still running answers
409. A claim left "in progress" longer than the lock timeout (a crashed process) may
be taken over: every effect beneath it carries its own idempotency key. Retention and
lock timeouts are real time (`wall_now`), whatever test clock an account is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Row, delete, select, text, update
from sqlalchemy.orm import Session

from billfold.clock import wall_now
from billfold.db import UNPACK, Unpackable, insert_or_ignore, packed
from billfold.errors import IdempotencyInProgress, IdempotencyKeyReused
from billfold.idempotency.models import IdempotencyKey

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: str


@dataclass(frozen=True)
class KeyPolicy:
    ttl: timedelta
    lock_timeout: timedelta


def claim(
    session: Session, *, scope: str, key: str, fingerprint: str, policy: KeyPolicy
) -> StoredResponse | None:
    """Claim `key` for this request, or return the stored response to replay.

    Raises IdempotencyKeyReused / IdempotencyInProgress. Returns None when the caller
    now holds the claim and must go on to do the work.
    """
    current = wall_now()
    values = {
        "scope": scope,
        "key": key,
        "fingerprint": fingerprint,
        "status": "in_progress",
        "created_at": current,
        "locked_at": current,
        "expires_at": current + policy.ttl,
    }
    if insert_or_ignore(session, IdempotencyKey, values, ["scope", "key"]):
        return None
    existing = session.get(IdempotencyKey, (scope, key), populate_existing=True)
    if existing is None or existing.expires_at <= current:
        # Expired (or deleted by a failed attempt in between): start afresh.
        session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
        )
        if insert_or_ignore(session, IdempotencyKey, values, ["scope", "key"]):
            return None
        raise IdempotencyInProgress("A request with this Idempotency-Key is in progress.")
    if existing.fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used with a different request.",
            details={"idempotency_key": key},
        )
    if existing.status == "completed":
        assert existing.response_status is not None and existing.response_body is not None
        return StoredResponse(existing.response_status, existing.response_body)
    taken_over = session.execute(
        update(IdempotencyKey)
        .where(
            IdempotencyKey.scope == scope,
            IdempotencyKey.key == key,
            IdempotencyKey.status == "in_progress",
            IdempotencyKey.locked_at == existing.locked_at,
            IdempotencyKey.locked_at < current - policy.lock_timeout,
        )
        .values(locked_at=current)
    ).rowcount  # type: ignore[attr-defined]
    if taken_over:
        return None
    raise IdempotencyInProgress(
        "A request with this Idempotency-Key is still in progress; retry later.",
        details={"idempotency_key": key},
        headers={"Retry-After": "1"},
    )


def store_completed(
    session: Session,
    *,
    scope: str,
    key: str,
    fingerprint: str,
    response: StoredResponse,
    policy: KeyPolicy,
) -> bool:
    """Insert the key already completed; False if any row (live or expired) holds it."""
    current = wall_now()
    return insert_or_ignore(
        session,
        IdempotencyKey,
        {
            "scope": scope,
            "key": key,
            "fingerprint": fingerprint,
            "status": "completed",
            "response_status": response.status_code,
            "response_body": response.body,
            "created_at": current,
            "locked_at": current,
            "expires_at": current + policy.ttl,
        },
        ["scope", "key"],
    )


def complete(session: Session, *, scope: str, key: str, response: StoredResponse) -> None:
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
        .values(
            status="completed",
            response_status=response.status_code,
            response_body=response.body,
        )
    )


def release(session: Session, *, scope: str, key: str) -> None:
    """Forget an in-progress claim whose request failed unexpectedly, so a retry can run."""
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.scope == scope,
            IdempotencyKey.key == key,
            IdempotencyKey.status == "in_progress",
        )
    )


# One short statement for any number of keys on PostgreSQL (prepared once): the keys packed
# into one text (keys are printable ASCII), or as an array; a list of placeholders
# elsewhere, in slices SQLite's limit on them allows.
_LIVE_PG = """
    SELECT key, fingerprint, status, response_status, response_body FROM idempotency_keys
    WHERE scope = :scope AND key = ANY({}) AND expires_at > :now
"""
_LIVE_PACKED_PG = text(_LIVE_PG.format(UNPACK.format(":keys")))
_LIVE_ARRAY_PG = text(_LIVE_PG.format("CAST(:keys AS varchar[])"))
_LIVE_SLICE = 500


def live(session: Session, *, scope: str, keys: list[str]) -> dict[str, Row[Any]]:
    """The live stored keys among `keys` in `scope`, by key: each row's key, fingerprint,
    status, response_status and response_body (what a replay or a refusal needs)."""
    current = wall_now()
    if session.get_bind().dialect.name == "postgresql":
        sent: str | list[str]
        try:
            statement, sent = _LIVE_PACKED_PG, packed(keys)
        except Unpackable:
            statement, sent = _LIVE_ARRAY_PG, keys
        rows = list(session.execute(statement, {"scope": scope, "keys": sent, "now": current}))
    else:
        k = IdempotencyKey
        rows = []
        for start in range(0, len(keys), _LIVE_SLICE):
            rows.extend(
                session.execute(
                    select(
                        k.key, k.fingerprint, k.status, k.response_status, k.response_body
                    ).where(
                        k.scope == scope,
                        k.key.in_(keys[start : start + _LIVE_SLICE]),
                        k.expires_at > current,
                    )
                )
            )
    return {row.key: row for row in rows}


def purge_expired(session: Session, *, limit: int) -> int:
    """Forget about `limit` expired keys, the oldest first (more only when several expired
    at the same instant); how many. The caller repeats it, one transaction each, so no
    purge holds a huge transaction open. Both statements are range scans of the
    `expires_at` index."""
    cutoff = wall_now()
    boundary = session.scalar(
        select(IdempotencyKey.expires_at)
        .where(IdempotencyKey.expires_at <= cutoff)
        .order_by(IdempotencyKey.expires_at)
        .offset(limit - 1)
        .limit(1)
    )
    result = session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.expires_at <= (boundary if boundary is not None else cutoff)
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
