"""Operator keys: create, list and revoke them, and say what a presented key may do.

`authorize` answers for every operator request, so it remembers what it found for
AUTH_CACHE_SECONDS per process: a revoked key stops working in the process that revoked
it at once, and in every other process within that time.
"""

from __future__ import annotations

import time

from billfold.operator_keys import service
from billfold.operator_keys.models import OperatorKey
from billfold.operator_keys.schemas import (
    OperatorKeyCreatedOut,
    OperatorKeyListOut,
    OperatorKeyOut,
    OperatorKeyRequest,
)
from billfold.security import hash_secret, secret_matches
from billfold.services import Services

AUTH_CACHE_SECONDS = 2.0
_MAX_REMEMBERED = 1024
ALL_SCOPES = frozenset({service.ADMIN})

# hash of a presented operator key → (its scopes or None, when looked up). Keys are
# global, not per Services: a key's hash names one row of one database's table, and a
# process serves one database.
_seen: dict[str, tuple[frozenset[str] | None, float]] = {}
_revocations = 0  # revocations in this process: a lookup older than one is not kept


def create_key(app: Services, *, body: OperatorKeyRequest) -> OperatorKeyCreatedOut:
    """A new key with its scopes; the key itself is in this answer only (stored hashed,
    and not kept under an Idempotency-Key either)."""
    with app.database.transaction() as session:
        created = service.create(session, name=body.name, scopes=body.scopes)
        return OperatorKeyCreatedOut(**_view(created.key).model_dump(), key=created.secret)


def list_keys(app: Services, *, include_revoked: bool = False) -> OperatorKeyListOut:
    with app.database.read() as session:
        keys = service.list_keys(session, include_revoked=include_revoked)
        return OperatorKeyListOut(items=[_view(key) for key in keys])


def revoke_key(app: Services, *, key_id: str) -> OperatorKeyOut:
    with app.database.transaction() as session:
        key = service.revoke(session, key_id)
        view = _view(key)
    global _revocations
    _revocations += 1
    _seen.clear()  # this process stops honouring it at once
    return view


def authorize(app: Services, secret: str) -> frozenset[str] | None:
    """The scopes of the key presented (the bootstrap admin key, or the one before it
    during a rotation: `admin`); None if it is no valid key."""
    if _bootstrap(app, secret):
        return ALL_SCOPES
    if not secret.startswith(service.KEY_PREFIX):
        return None
    digest = hash_secret(secret)
    found = _recent(digest)
    if found is not None:
        return found[0]
    revocations = _revocations
    with app.database.read() as session:
        scopes = service.scopes_of(session, secret)
    if revocations == _revocations:  # no revocation here meanwhile: worth remembering
        if len(_seen) >= _MAX_REMEMBERED:
            _seen.clear()
        _seen[digest] = (scopes, time.monotonic())
    return scopes


def remembered(app: Services, secret: str) -> frozenset[str] | None:
    """`authorize` without a database read: the scopes if known right now (the bootstrap
    keys, or a key looked up within AUTH_CACHE_SECONDS), else None."""
    if _bootstrap(app, secret):
        return ALL_SCOPES
    found = _recent(hash_secret(secret)) if secret.startswith(service.KEY_PREFIX) else None
    return found[0] if found is not None else None


def _recent(digest: str) -> tuple[frozenset[str] | None] | None:
    """What a lookup of the key with this hash found within AUTH_CACHE_SECONDS (its scopes,
    or None for no valid key), or None if there is none that recent."""
    found = _seen.get(digest)
    if found is not None and time.monotonic() - found[1] < AUTH_CACHE_SECONDS:
        return (found[0],)
    return None


def _bootstrap(app: Services, secret: str) -> bool:
    """The admin key from the settings (or, during a rotation, the one before it)."""
    current = secret_matches(secret, app.admin_key_hash)
    previous = app.previous_admin_key_hash is not None and secret_matches(
        secret, app.previous_admin_key_hash
    )
    return current or previous


def allows(scopes: frozenset[str], needed: str) -> bool:
    return service.ADMIN in scopes or needed in scopes


def _view(key: OperatorKey) -> OperatorKeyOut:
    return OperatorKeyOut(
        id=key.id,
        name=key.name,
        key_prefix=key.key_prefix,
        scopes=list(key.scopes),
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )
