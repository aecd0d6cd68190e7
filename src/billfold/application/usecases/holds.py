"""Usage hold use cases for the operator's platform: hold, capture, release and read.

A call naming a hold by its id runs on the time of the hold's account (its test clock,
if it lives on one), and first gives back the money of a hold whose time ran out, in a
transaction of its own: so an expired hold is answered as expired, its money already
back, even before its expiry job ran.

On PostgreSQL and real time, a hold and a capture from an event loop go with the usage
charges beside them in one batch (`application.charging`, `wallet.usage`); what that batch
leaves alone (an unknown, inactive or expired hold, a refusal, a replayed key, an
auto-funding crossing, a test clock) comes back here, to the careful path.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
from sqlalchemy.orm import Session

from billfold.application import charging
from billfold.application.idempotent import Outcome, Reply, operator_scope
from billfold.application.testclock import on_account_clock
from billfold.application.usecases.base import Call, for_operator
from billfold.clock import as_utc, now
from billfold.money import to_micros
from billfold.services import Services
from billfold.wallet import holds, usage
from billfold.wallet.models import HoldStatus, UsageHold
from billfold.wallet.schemas import (
    UsageHoldCaptureRequest,
    UsageHoldOut,
    UsageHoldReleaseRequest,
    UsageHoldRequest,
)

T = TypeVar("T")


def create_hold(app: Services, *, call: Call, body: UsageHoldRequest) -> Reply:
    """Reserve funds in an account's wallet for usage to be captured later."""

    def handler(session: Session) -> Outcome:
        hold, txn = holds.create(
            session,
            account_id=body.account_id,
            amount_micros=to_micros(body.amount),
            usecase=body.usecase,
            description=body.description,
            metadata=body.metadata,
            ttl=timedelta(seconds=body.ttl_seconds),
        )
        return 201, _out(hold, txn.balance_after_micros)

    return for_operator(app, call).atomic(handler)


async def create_hold_async(app: Services, *, call: Call, body: UsageHoldRequest) -> Reply:
    """`create_hold` for an event loop: written in the next usage batch when it can be."""
    op = usage.HoldCreate(
        account_id=body.account_id,
        amount_micros=to_micros(body.amount),
        usecase=body.usecase,
        description=body.description,
        metadata=body.metadata,
        ttl=timedelta(seconds=body.ttl_seconds),
        created_at=now(),
        **_keyed(call),
    )
    return await _batched(app, op, partial(create_hold, app, call=call, body=body))


async def capture_hold_async(
    app: Services, *, call: Call, hold_id: str, body: UsageHoldCaptureRequest
) -> Reply:
    """`capture_hold` for an event loop: written in the next usage batch when it can be."""
    op = usage.HoldCapture(
        hold_id=hold_id,
        account_id=body.account_id,
        amount_micros=to_micros(body.amount) if body.amount is not None else None,
        created_at=now(),
        **_keyed(call),
    )
    careful = partial(capture_hold, app, call=call, hold_id=hold_id, body=body)
    return await _batched(app, op, careful)


def _keyed(call: Call) -> dict[str, Any]:
    return {
        "key": call.key,
        "scope": operator_scope(),
        "fingerprint": call.fingerprint,
        "request_id": call.request_id,
    }


async def _batched(app: Services, op: usage.Op, careful: Callable[[], Reply]) -> Reply:
    """`op` in the loop committer's next batch (on PostgreSQL, on real time); what the
    batch leaves alone, and everything elsewhere, through `careful` in a worker thread."""
    if charging.loop_commits(app):
        answer = await charging.loop_committer(app).submit(op)
        if answer is not None:
            return Reply(answer.status_code, answer.body)
    return await anyio.to_thread.run_sync(careful)


def capture_hold(
    app: Services, *, call: Call, hold_id: str, body: UsageHoldCaptureRequest
) -> Reply:
    """Charge all or part of a hold as usage; the rest goes back to the wallet."""
    amount_micros = to_micros(body.amount) if body.amount is not None else None

    def handler(session: Session) -> Outcome:
        captured = holds.capture(
            session, hold_id=hold_id, account_id=body.account_id, amount_micros=amount_micros
        )
        return 200, _out(captured.hold, captured.charge.balance_after_micros)

    return _on_hold(app, hold_id, body.account_id, lambda: for_operator(app, call).atomic(handler))


def release_hold(
    app: Services, *, call: Call, hold_id: str, body: UsageHoldReleaseRequest
) -> Reply:
    """Give a whole hold back to the wallet."""

    def handler(session: Session) -> Outcome:
        hold, txn = holds.release(session, hold_id=hold_id, account_id=body.account_id)
        return 200, _out(hold, txn.balance_after_micros)

    return _on_hold(app, hold_id, body.account_id, lambda: for_operator(app, call).atomic(handler))


def get_hold(app: Services, *, hold_id: str, account_id: str | None) -> UsageHoldOut:
    def read() -> UsageHoldOut:
        with app.database.read() as session:
            return _out(holds.get(session, hold_id=hold_id, account_id=account_id), None)

    return _on_hold(app, hold_id, account_id, read)


def _on_hold(app: Services, hold_id: str, account_id: str | None, run: Callable[[], T]) -> T:
    """Run `run` on the time of the hold's account, once an expired hold gave its money
    back. An unknown hold (or one of another account) is left to `run` to refuse."""
    with app.database.read() as session:
        hold = session.get(UsageHold, hold_id)
        owner = hold.account_id if hold is not None else None
        held_until = (
            as_utc(hold.expires_at) if hold is not None and hold.status == HoldStatus.HELD else None
        )
    if owner is None or (account_id is not None and owner != account_id):
        return run()
    with on_account_clock(app, owner):
        if held_until is not None and held_until <= now():  # (checked again under lock)
            with app.database.transaction() as session:
                holds.expire_if_due(session, hold_id)
        return run()


def _out(hold: UsageHold, balance_after_micros: int | None) -> UsageHoldOut:
    return UsageHoldOut.model_validate(
        holds.hold_view(hold, balance_after_micros=balance_after_micros)
    )
