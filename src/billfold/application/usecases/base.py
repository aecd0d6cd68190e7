"""What a write use case is called with (`Call`) and how it runs under its idempotency key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from billfold.application.idempotent import (
    Idempotent,
    account_scope,
    checked_key,
    operator_scope,
    request_fingerprint,
)
from billfold.ids import new_id
from billfold.jsonenc import render
from billfold.services import Services


@dataclass(frozen=True)
class Call:
    """One write request as its front end received it.

    `key` is the client's idempotency key (None: just run it); `fingerprint` says what
    "the same request" is, so a key reused with another payload is refused; `request_id`
    is quoted in a stored refusal. HTTP builds it from the request (method, path, query and
    body: `api/deps.py`); other front ends build it with `Call.of`.
    """

    key: str | None = None
    fingerprint: str = ""
    request_id: str = ""

    @classmethod
    def of(
        cls,
        operation: str,
        args: Mapping[str, Any],
        *,
        key: str | None = None,
        request_id: str | None = None,
    ) -> Call:
        """A call named by its operation (e.g. `wallet.fund`) and its arguments as JSON
        values; the same operation and arguments (canonical: key order and how a number is
        written do not matter) make the same fingerprint."""
        return cls(
            key=checked_key(key, field_name="idempotency_key"),
            fingerprint=request_fingerprint("CALL", operation, "", render(dict(args))),
            request_id=request_id or new_id("req", 20),
        )


def for_account(app: Services, call: Call, account_id: str) -> Idempotent:
    """The runner of an agent's write: its keys are the account's own."""
    return _runner(app, call, account_scope(account_id))


def for_operator(app: Services, call: Call) -> Idempotent:
    """The runner of an operator's write: one key space for the operator."""
    return _runner(app, call, operator_scope())


def unkeyed(app: Services) -> Idempotent:
    """The runner of a write that never runs under a key (a login: a replay would hand its
    fresh token out again): it just runs, and a refusal is raised."""
    return Idempotent(app, scope=None, key=None, fingerprint="")


def _runner(app: Services, call: Call, scope: str) -> Idempotent:
    return Idempotent(
        app, scope=scope, key=call.key, fingerprint=call.fingerprint, request_id=call.request_id
    )
