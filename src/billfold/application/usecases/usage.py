"""The operator's usage charges: one at a time (group-committed with its neighbours) or a
batch of up to 1,000 in one request, each charge with its own idempotency key.

A charge and a batch item with the same key and the same fields are the same request:
the fingerprint of an item is the one its single `POST /usage-charges` would have, so a
batch replays single charges and the other way round.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from functools import cached_property, partial
from json.encoder import encode_basestring
from typing import Any

import anyio.to_thread
from pydantic import ValidationError
from sqlalchemy import Row
from sqlalchemy.orm import Session

from billfold import clock
from billfold.application import charging
from billfold.application.idempotent import (
    Outcome,
    Reply,
    checked_key,
    operator_scope,
    payload_fingerprint,
)
from billfold.application.testclock import account_clock
from billfold.application.usecases.base import Call, for_operator
from billfold.clock import ClockTime, current_test_clock, now
from billfold.errors import (
    BillfoldError,
    ErrorCode,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidRequest,
    error_payload,
)
from billfold.idempotency import service as idempotency
from billfold.jsonenc import dumps, envelope, render
from billfold.money import from_micros, to_micros
from billfold.schemas import ErrorObject
from billfold.services import Services
from billfold.wallet import service, usage
from billfold.wallet.batch_schemas import (
    BatchItemStatus,
    UsageBatchItem,
    UsageBatchItemOut,
    UsageBatchOut,
)
from billfold.wallet.schemas import UsageChargeOut, UsageChargeRequest

# The single charge's route: a batch item's fingerprint is the one this request would have.
USAGE_CHARGES_PATH = "/api/admin/v1/usage-charges"


def charge_usage(app: Services, *, call: Call, body: UsageChargeRequest) -> Reply:
    """Debit an account's wallet for usage (the platform's hot path), group-committed with
    the charges arriving beside it (`application.charging`)."""
    answer = _write_one(app, _charge(body, call))
    if answer is not None:
        return Reply(answer.status_code, answer.body)
    return for_operator(app, call).atomic(_careful_charge(body))


async def charge_usage_async(app: Services, *, call: Call, body: UsageChargeRequest) -> Reply:
    """`charge_usage` for an event loop: it awaits its batch's commit instead of holding a
    thread while it waits (the write itself runs on the committer's thread)."""
    if not _group_committed(app):
        # Written in a worker thread, which keeps the account's clock (a context variable).
        return await anyio.to_thread.run_sync(partial(charge_usage, app, call=call, body=body))
    charge = _charge(body, call)
    if app.database.is_sqlite:  # no driver for the loop: the process's committer thread
        answer = await asyncio.wrap_future(charging.committer(app).enqueue(charge))
    else:
        answer = await charging.loop_committer(app).submit(charge)
    if answer is not None:
        return Reply(answer.status_code, answer.body)
    careful = for_operator(app, call)
    return await anyio.to_thread.run_sync(careful.atomic, _careful_charge(body))


def _charge(body: UsageChargeRequest, call: Call, at: datetime | None = None) -> usage.Charge:
    return usage.Charge(
        account_id=body.account_id,
        amount_micros=to_micros(body.amount),
        usecase=body.usecase,
        description=body.description,
        metadata=body.metadata,
        created_at=now() if at is None else at,
        key=call.key,
        scope=operator_scope(),
        fingerprint=call.fingerprint,
        request_id=call.request_id,
    )


def _group_committed(app: Services) -> bool:
    """Charges on real time go to the process's committer; on a test clock they are
    written in the caller's thread, where the account's clock is set."""
    return current_test_clock() is None and app.settings.usage_group_commit


def _write_one(app: Services, charge: usage.Charge) -> usage.Answer | None:
    if _group_committed(app):
        return charging.committer(app).submit(charge)
    # On a test clock: written in this thread, where the account's clock is set.
    return charging.write_batch(app, [charge])[0]


def _careful_charge(body: UsageChargeRequest) -> Callable[[Session], Outcome]:
    """A charge whose key was already stored: claimed, then replayed, refused or run."""

    def handler(session: Session) -> Outcome:
        txn = service.charge_usage(
            session,
            account_id=body.account_id,
            amount_micros=to_micros(body.amount),
            usecase=body.usecase,
            description=body.description,
            metadata=body.metadata,
        )
        return 201, UsageChargeOut(
            id=txn.id,
            account_id=txn.account_id,
            amount=from_micros(txn.amount_micros),
            usecase=txn.usecase,
            balance_after=from_micros(txn.balance_after_micros),
            created_at=txn.created_at,
        )

    return handler


# --- batches -----------------------------------------------------------------------------

INVALID_CODES = frozenset(
    {
        ErrorCode.INVALID_REQUEST.value,
        ErrorCode.ACCOUNT_NOT_FOUND.value,
        ErrorCode.IDEMPOTENCY_KEY_REUSED.value,
    }
)


class _Item:
    """One batch item on its way: parsed, then answered."""

    def __init__(self, index: int, raw: Any) -> None:
        self.index = index
        self.raw = raw
        self.key: str | None = raw.get("idempotency_key") if isinstance(raw, dict) else None
        if not isinstance(self.key, str):
            self.key = None
        self.body: UsageBatchItem | None = None
        self.fingerprint = ""
        self.status_code = 0
        self.answered: bytes | str = b"{}"
        self.replayed = False

    def answer(self, status_code: int, body: bytes | str, *, replayed: bool = False) -> None:
        self.status_code = status_code
        self.answered = body
        self.replayed = replayed
        self.__dict__.pop("payload", None)  # read back from this answer, if ever

    @property
    def fresh(self) -> bool:
        """A charge this request made: `answered` is its `{"data": …}` as `render` writes
        it, to be quoted, not read back."""
        return self.status_code == 201 and not self.replayed

    @cached_property
    def payload(self) -> dict[str, Any]:
        """The answer's envelope, read back."""
        loaded: dict[str, Any] = json.loads(self.answered, parse_float=Decimal)
        return loaded

    def refuse(self, exc: BillfoldError, request_id: str) -> None:
        self.answer(exc.status_code, render(error_payload(exc, request_id)))

    @property
    def status(self) -> BatchItemStatus:
        if self.fresh:
            return "charged"
        if self.replayed:
            return "replayed"
        error = self.payload.get("error")
        if error is None:
            return "charged"
        if error["code"] == ErrorCode.INSUFFICIENT_FUNDS.value:
            return "insufficient_funds"
        if error["code"] in INVALID_CODES:
            return "invalid"
        return "refused"

    def out(self) -> UsageBatchItemOut:
        payload = self.payload
        error = payload.get("error")
        return UsageBatchItemOut(
            index=self.index,
            idempotency_key=self.key,
            status=self.status,
            http_status=self.status_code,
            charge=UsageChargeOut.model_validate(payload["data"]) if error is None else None,
            error=ErrorObject.model_validate(error) if error is not None else None,
        )

    def rendered(self) -> str:
        """`out()` as `jsonenc.dumps` writes it; a fresh charge's by quoting its answer."""
        if not self.fresh:
            return dumps(self.out().model_dump())
        answered = self.answered if isinstance(self.answered, str) else self.answered.decode()
        assert answered.startswith(_DATA) and answered.endswith("}") and self.key is not None
        return (
            f'{{"index": {self.index}, "idempotency_key": {encode_basestring(self.key)}, '
            f'"status": "charged", "http_status": {self.status_code}, '
            f'"charge": {answered[len(_DATA) : -1]}, "error": null}}'
        )


_DATA = '{"data": '


class UsageBatch:
    """A batch's outcome: each item's, in order."""

    def __init__(self, items: list[_Item]) -> None:
        self.items = items
        self._statuses = [item.status for item in items]

    def _counts(self) -> dict[str, int]:
        return {
            "charged": self._statuses.count("charged"),
            "replayed": self._statuses.count("replayed"),
            "refused": sum(s not in ("charged", "replayed") for s in self._statuses),
        }

    def out(self) -> UsageBatchOut:
        return UsageBatchOut(items=[item.out() for item in self.items], **self._counts())

    def render(self) -> bytes:
        """`{"data": out()}` as `jsonenc.render` writes it, byte for byte, without building
        and dumping a model per item: each fresh charge's answer is quoted as it is."""
        counts = ", ".join(f'"{name}": {count}' for name, count in self._counts().items())
        items = ", ".join(item.rendered() for item in self.items)
        try:
            return f'{{"data": {{"items": [{items}], {counts}}}}}'.encode()
        except UnicodeEncodeError:
            return render(envelope(self.out()))


def _validation_error(exc: ValidationError) -> InvalidRequest:
    errors = [
        {
            "field": ".".join(str(p) for p in error["loc"]) or "body",
            "message": str(error["msg"]).removeprefix("Value error, "),
        }
        for error in exc.errors()
    ]
    first = errors[0]
    return InvalidRequest(
        f"{first['field']}: {first['message']}",
        details={"errors": errors, "field": first["field"]},
    )


def _parse(item: _Item, request_id: str) -> bool:
    """Check the item; False (and the item refused as invalid) when it is not a charge."""
    if not isinstance(item.raw, dict):
        item.refuse(InvalidRequest("Each charge must be a JSON object."), request_id)
        return False
    try:
        body = UsageBatchItem.model_validate(item.raw)
        key = checked_key(body.idempotency_key, field_name="idempotency_key")
    except ValidationError as exc:
        item.refuse(_validation_error(exc), request_id)
        return False
    except InvalidRequest as exc:
        item.refuse(exc, request_id)
        return False
    assert key is not None
    item.key, item.body = key, body
    fields = {k: v for k, v in item.raw.items() if k != "idempotency_key"}
    item.fingerprint = payload_fingerprint("POST", USAGE_CHARGES_PATH, "", fields)
    return True


def _stored(app: Services, keys: list[str]) -> dict[str, Row[Any]]:
    """The live stored keys among `keys`, in the operator's key space."""
    with app.database.read() as session:
        return idempotency.live(session, scope=operator_scope(), keys=keys)


def charge_usage_batch(app: Services, *, charges: list[Any], request_id: str) -> UsageBatch:
    """Check, then charge up to 1,000 items in one transaction, each on its own: a refusal
    (insufficient funds, an unknown account, a bad item) leaves its neighbours charged;
    an item whose key is stored answers that key's outcome (replayed)."""
    items = [_Item(i, raw) for i, raw in enumerate(charges)]
    first_of: dict[str, _Item] = {}
    twins: list[tuple[_Item, _Item]] = []
    fresh: list[_Item] = []
    for item in items:
        if not _parse(item, request_id):
            continue
        assert item.key is not None
        first = first_of.setdefault(item.key, item)
        if first is not item:
            twins.append((item, first))
        else:
            fresh.append(item)

    for time, group in _by_clock(app, fresh):
        with clock.on(time):
            _write_group(app, group, request_id)

    for twin, first in twins:
        if twin.fingerprint != first.fingerprint:
            twin.refuse(_key_reused(twin), request_id)
        else:
            twin.answer(first.status_code, first.answered, replayed=True)

    return UsageBatch(items)


def _by_clock(app: Services, items: list[_Item]) -> list[tuple[ClockTime | None, list[_Item]]]:
    """The items by the time their accounts live on: real time (usually all of them, one
    transaction), or each test clock's (one transaction per clock, on its time)."""
    groups: dict[str | None, tuple[ClockTime | None, list[_Item]]] = {}
    for item in items:
        assert item.body is not None
        time = account_clock(app, item.body.account_id)
        groups.setdefault(time.test_clock_id if time else None, (time, []))[1].append(item)
    return list(groups.values())


def _write_group(app: Services, items: list[_Item], request_id: str) -> None:
    at = now()  # one request, one time: every item of it is charged at it
    charges = [_batch_charge(item, request_id, at) for item in items]
    written = charging.write_batch(app, charges)
    for item, answer in zip(items, written, strict=True):
        if answer is not None:
            item.answer(answer.status_code, answer.body)
    taken = [item for item, answer in zip(items, written, strict=True) if answer is None]
    _answer_stored(app, taken, request_id)


def _answer_stored(app: Services, items: list[_Item], request_id: str) -> None:
    """Items whose key was found stored (a replay, a twin of another request): answered as
    that key answers (its outcome, or a refusal: another payload, still in progress)."""
    if not items:
        return
    stored = _stored(app, [item.key for item in items if item.key is not None])
    for item in items:
        row = stored.get(item.key or "")
        if row is None:
            # Gone since (released by a failed request, or expired): the careful way.
            assert item.body is not None
            call = Call(key=item.key, fingerprint=item.fingerprint, request_id=request_id)
            reply = for_operator(app, call).atomic(_careful_charge(item.body))
            item.answer(reply.status_code, reply.body, replayed=reply.replayed)
        elif row.fingerprint != item.fingerprint:
            item.refuse(_key_reused(item), request_id)
        elif row.status == "completed" and row.response_body is not None:
            item.answer(row.response_status or 0, row.response_body, replayed=True)
        else:
            item.refuse(_key_in_progress(item), request_id)


def _batch_charge(item: _Item, request_id: str, at: datetime) -> usage.Charge:
    assert item.body is not None
    call = Call(key=item.key, fingerprint=item.fingerprint, request_id=request_id)
    return _charge(item.body, call, at)


def _key_reused(item: _Item) -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        "This Idempotency-Key was used with a different request.",
        details={"idempotency_key": item.key},
    )


def _key_in_progress(item: _Item) -> IdempotencyInProgress:
    return IdempotencyInProgress(
        "A request with this Idempotency-Key is still in progress; retry later.",
        details={"idempotency_key": item.key},
    )


__all__ = [
    "USAGE_CHARGES_PATH",
    "UsageBatch",
    "charge_usage",
    "charge_usage_async",
    "charge_usage_batch",
]
