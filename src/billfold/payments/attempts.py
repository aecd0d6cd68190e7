"""One payment-attempt state machine for every card charge.

Charging a card happens between two transactions: the processor is another service, and
a process can die, or the processor time out, between its charge and the recording of
it. Whatever the charge pays for (`AttemptPurpose`), it goes the same way:

1. `begin`, in the caller's transaction (committed before the processor is called):
   an attempt row, `pending`, with the processor idempotency key derived from the
   operation (a request's idempotency key, a job, an invoice's attempt), and a janitor
   job for it `STALE_AFTER` ahead. Running the same operation again finds the same
   attempt and reuses its key, so the processor sees one charge; only after a charge
   that was never made does the operation get a new attempt (and key);
2. `run`: the processor call, outside any transaction. If it raises, the attempt is
   `unknown`: the processor may or may not have charged;
3. `record`: a conditional UPDATE moves the attempt from pending/unknown to
   succeeded/failed. Only the transaction whose UPDATE moved it records the payment and
   runs the purpose's handler, in that same transaction: exactly once, whoever races.

The handlers live in the higher domains (wallet, coupons, checkout, subscriptions) and
subscribe to this module's topics when they are imported (see `billfold.events`):
`on_success(purpose)` (exactly one handler; its result comes back in the `Outcome`),
`on_failure(purpose)` (give back a reservation, count a decline, dun an invoice) and
`locking(purpose)` (rows to lock before the attempt's, to keep the lock order:
subscription → invoice → attempt → number series → wallet → credit grants).

The janitor (`billfold.payments.janitor`) settles attempts left open, from what the
processor knows; it never starts a charge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, Update, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from billfold.clock import as_utc, now, wall_now
from billfold.db import Database, insert_or_ignore
from billfold.events import Topic
from billfold.ids import new_id
from billfold.jobs import service as jobs
from billfold.money import micros_to_cents
from billfold.payments import service as payments
from billfold.payments.models import (
    OPEN_STATES,
    AttemptPurpose,
    AttemptState,
    FailureReason,
    Payment,
    PaymentAttempt,
)
from billfold.processors.base import (
    Card,
    ChargeRequest,
    ChargeResult,
    Processor,
    UnknownPaymentMethod,
)

if TYPE_CHECKING:
    from billfold.services import Services

log = logging.getLogger("billfold.payments")

JANITOR_JOB = "payments.settle_attempts"  # see billfold.payments.janitor
# How long an attempt may stay open before the janitor settles it: far beyond any
# processor call's timeout, so a request still running is never taken for a dead one.
STALE_AFTER = timedelta(minutes=5)
# The janitor's first look, which only records a charge the processor already knows.
FIRST_LOOK_AFTER = timedelta(minutes=1)
# A charge that starts longer than this after its attempt's last mark (`charge_started_at`)
# marks it again first: the janitor's STALE_AFTER then never counts from long before it.
MARK_AGAIN_AFTER = timedelta(seconds=30)

__all__ = [
    "FIRST_LOOK_AFTER",
    "JANITOR_JOB",
    "STALE_AFTER",
    "Attempt",
    "AttemptPurpose",
    "AttemptState",
    "FailureReason",
    "NewAttempt",
    "Outcome",
    "Settled",
    "begin",
    "begin_first",
    "charge_begun",
    "fail",
    "locking",
    "on_failure",
    "on_success",
    "record",
    "run",
    "settle_charged",
]


@dataclass(frozen=True)
class Attempt:
    """What an attempt row says, as callers and handlers see it."""

    id: str
    account_id: str
    purpose: AttemptPurpose
    operation: str
    number: int
    key: str
    state: AttemptState
    amount_micros: int
    currency: str
    payment_method_id: str
    payment_purpose: str
    context: dict[str, Any]
    payment_id: str | None
    failure_reason: FailureReason | None
    failure_message: str | None
    created_at: datetime
    # When a charge under its key last began (real time; None: before migration 0012).
    charge_started_at: datetime | None = None
    new: bool = False  # written by the `begin` that returned it

    @classmethod
    def of(cls, row: PaymentAttempt, *, new: bool = False) -> Attempt:
        return cls(
            id=row.id,
            account_id=row.account_id,
            purpose=AttemptPurpose(row.purpose),
            operation=row.operation,
            number=row.number,
            key=row.key,
            state=AttemptState(row.state),
            amount_micros=row.amount_micros,
            currency=row.currency,
            payment_method_id=row.payment_method_id,
            payment_purpose=row.payment_purpose,
            context=dict(row.context or {}),
            payment_id=row.payment_id,
            failure_reason=FailureReason(row.failure_reason) if row.failure_reason else None,
            failure_message=row.failure_message,
            created_at=row.created_at,
            charge_started_at=row.charge_started_at,
            new=new,
        )

    @property
    def succeeded(self) -> bool:
        return self.state == AttemptState.SUCCEEDED

    @property
    def never_charged(self) -> bool:
        """Failed without reaching a charge: its operation may try again, under a new key."""
        return self.state == AttemptState.FAILED and self.failure_reason in (
            FailureReason.CARD_UNAVAILABLE,
            FailureReason.NOT_CHARGED,
        )


@dataclass(frozen=True)
class Settled:
    """An attempt's recorded outcome, handed to its purpose's handlers."""

    attempt: Attempt  # in its new state
    payment: Payment | None  # None when no charge was made
    card: Card | None = None  # a card to keep, now that it was charged
    recovered: bool = False  # recorded by the janitor
    # What the outcome is recorded with: the janitor's, or what the request passed to
    # `run` (a purpose whose handlers read settings, such as dunning, passes it).
    services: Services | None = None

    @property
    def reason(self) -> FailureReason | None:
        return self.attempt.failure_reason


@dataclass(frozen=True)
class Outcome:
    """What became of an attempt: `recorded` when this call settled it (and ran its
    handlers, `value` being what the handler returned)."""

    attempt: Attempt
    payment: Payment | None
    recorded: bool
    value: Any = None

    @property
    def succeeded(self) -> bool:
        return self.attempt.state == AttemptState.SUCCEEDED


@dataclass(frozen=True)
class _Handlers:
    locking: Topic[Attempt, None]
    succeeded: Topic[Settled, Any]
    failed: Topic[Settled, Any]


_HANDLERS = {
    purpose: _Handlers(
        locking=Topic[Attempt, None](f"payments.attempt.{purpose}.locking"),
        succeeded=Topic[Settled, Any](f"payments.attempt.{purpose}.succeeded", single=True),
        failed=Topic[Settled, Any](f"payments.attempt.{purpose}.failed"),
    )
    for purpose in AttemptPurpose
}


def on_success(purpose: AttemptPurpose) -> Topic[Settled, Any]:
    """The purpose's one success handler: credits what the charge paid for."""
    return _HANDLERS[purpose].succeeded


def on_failure(purpose: AttemptPurpose) -> Topic[Settled, Any]:
    """Handlers of a failed attempt (declined, card unavailable, never charged)."""
    return _HANDLERS[purpose].failed


def locking(purpose: AttemptPurpose) -> Topic[Attempt, None]:
    """Handlers that lock, before the attempt row, what the purpose's handlers change."""
    return _HANDLERS[purpose].locking


# --- starting an attempt ------------------------------------------------------------


def latest(session: Session, operation: str) -> Attempt | None:
    """The newest attempt of an operation."""
    row = session.scalars(
        select(PaymentAttempt)
        .where(PaymentAttempt.operation == operation)
        .order_by(PaymentAttempt.number.desc())
        .limit(1)
    ).first()
    return Attempt.of(row) if row is not None else None


def get(session: Session, attempt_id: str) -> Attempt | None:
    row = session.get(PaymentAttempt, attempt_id, populate_existing=True)
    return Attempt.of(row) if row is not None else None


def _janitor_key(attempt_id: str) -> str:
    return f"attempt:{attempt_id}"


def _first_look_key(attempt_id: str) -> str:
    return f"attempt:{attempt_id}:first-look"


def begin(
    session: Session,
    *,
    purpose: AttemptPurpose,
    operation: str,
    account_id: str,
    amount_micros: int,
    currency: str,
    payment_method_id: str,
    payment_purpose: str,
    context: dict[str, Any] | None = None,
) -> Attempt:
    """The operation's attempt: the one already made, or a new `pending` one (in the
    caller's transaction, which must commit before the processor is called).

    A new attempt's key is the operation itself, or `<operation>#<n>` for the n-th after
    attempts that never charged. Two callers racing for the same operation meet at the
    key's unique index: one writes the attempt, both get it.
    """
    previous = latest(session, operation)
    if previous is not None and not previous.never_charged:
        return previous
    number = 1 if previous is None else previous.number + 1
    new = NewAttempt(
        purpose=purpose,
        operation=operation,
        account_id=account_id,
        amount_micros=amount_micros,
        currency=currency,
        payment_method_id=payment_method_id,
        payment_purpose=payment_purpose,
        context=context or {},
    )
    values = _values(new, number, now())
    key = values["key"]
    inserted = insert_or_ignore(session, PaymentAttempt, values, ["key"])
    if not inserted:  # a racer wrote it first: theirs
        row = session.scalars(
            select(PaymentAttempt)
            .where(PaymentAttempt.key == key)
            .execution_options(populate_existing=True)
        ).one()
        return Attempt.of(row)
    jobs.enqueue_new(session, _janitor_jobs(values))
    return Attempt.of(PaymentAttempt(**values), new=True)  # as written: no read back


@dataclass(frozen=True)
class NewAttempt:
    """An operation's attempt to begin (`begin`'s arguments)."""

    purpose: AttemptPurpose
    operation: str
    account_id: str
    amount_micros: int
    currency: str
    payment_method_id: str
    payment_purpose: str
    context: dict[str, Any]


def begin_first(session: Session, new: list[NewAttempt]) -> list[Attempt]:
    """`begin` for operations that can have no attempt yet (named after rows the caller's
    transaction just wrote, such as a new invoice's first attempt), many at once: their
    rows and janitor jobs in two multi-row INSERTs. Their callers may charge them one
    after another: `run` marks a charge start again before a charge that comes more than
    MARK_AGAIN_AFTER after this."""
    current = now()
    rows = [_values(attempt, 1, current) for attempt in new]
    if rows:
        session.execute(insert(PaymentAttempt), rows)
        jobs.enqueue_new(session, [job for row in rows for job in _janitor_jobs(row)])
    return [Attempt.of(PaymentAttempt(**row), new=True) for row in rows]


def _values(new: NewAttempt, number: int, current: datetime) -> dict[str, Any]:
    """A new attempt's row: its key is the operation, `<operation>#<n>` for the n-th."""
    return {
        "id": new_id("pat"),
        "account_id": new.account_id,
        "purpose": new.purpose.value,
        "operation": new.operation,
        "number": number,
        "key": new.operation if number == 1 else f"{new.operation}#{number}",
        "state": AttemptState.PENDING.value,
        "amount_micros": new.amount_micros,
        "currency": new.currency,
        "payment_method_id": new.payment_method_id,
        "payment_purpose": new.payment_purpose,
        "context": new.context,
        "created_at": current,
        "updated_at": current,
        # Real time, whatever clock the account is on: how long a processor call may
        # still be on its way is a matter of real time.
        "charge_started_at": wall_now(),  # its caller charges once this commits
    }


def _janitor_jobs(row: dict[str, Any]) -> list[jobs.NewJob]:
    """A first look after a minute records a charge the processor already knows; the
    check at STALE_AFTER also settles one it never saw (see billfold.payments.janitor)."""
    attempt_id, created = row["id"], row["created_at"]
    return [
        jobs.NewJob(
            kind=JANITOR_JOB,
            account_id=row["account_id"],
            payload={"attempt_id": attempt_id, "found_only": True},
            run_at=created + FIRST_LOOK_AFTER,
            dedupe_key=_first_look_key(attempt_id),
        ),
        jobs.NewJob(
            kind=JANITOR_JOB,
            account_id=row["account_id"],
            payload={"attempt_id": attempt_id},
            run_at=created + STALE_AFTER,
            dedupe_key=_janitor_key(attempt_id),
        ),
    ]


# --- charging and recording ---------------------------------------------------------


def charge(
    processor: Processor, attempt: Attempt, *, customer_id: str, description: str
) -> ChargeResult:
    """The processor call under the attempt's key (outside any transaction)."""
    return processor.charge(**asdict(_charge_request(attempt, customer_id, description)))


def _charge_request(attempt: Attempt, customer_id: str, description: str) -> ChargeRequest:
    return ChargeRequest(
        customer_id=customer_id,
        payment_method_id=attempt.payment_method_id,
        amount_cents=micros_to_cents(attempt.amount_micros),
        currency=attempt.currency,
        idempotency_key=attempt.key,
        description=description,
    )


def run(
    database: Database,
    processor: Processor,
    attempt: Attempt,
    *,
    description: str,
    prepare: Callable[[str], Card | None] | None = None,
    services: Services | None = None,
    customer_id: str | None = None,
) -> Outcome:
    """Charge the card of an attempt begun (and committed) by the caller, and record the
    outcome. An attempt already settled is answered as recorded, without a call.
    `customer_id`: the account's processor customer, if the caller read it already.

    `prepare(customer_id)` runs just before the charge, e.g. to check a card not on file
    (returning it, to keep once charged). A card the processor does not know settles the
    attempt failed (`card_unavailable`); anything else raised before the charge fails it
    as never charged (when this call began it) and is raised again; anything the
    processor call raises leaves it `unknown` for the janitor and is raised again.
    """
    if attempt.state.settled:
        return replay(database, attempt)
    try:
        customer_id = customer_id or payments.ensure_customer(
            database, processor, attempt.account_id
        )
    except Exception:
        _not_charged(database, attempt, services)
        raise
    card: Card | None = None
    if prepare is not None:
        try:
            card = prepare(customer_id)
        except UnknownPaymentMethod:
            if attempt.new:
                try:
                    unavailable = FailureReason.CARD_UNAVAILABLE
                    return _fail_unjoined(database, attempt, unavailable, services)
                except ChargeMayBeInFlight:
                    pass  # joined meanwhile: as below
            # An earlier run may have charged under this key: the processor answers that
            # charge below, or refuses the card again (then nothing was ever charged).
        except Exception:
            _not_charged(database, attempt, services)
            raise
    if _mark_before_charge(attempt):
        marked = _charge_starts(database, attempt)
        if marked is None:
            return replay(database, attempt)  # settled meanwhile (never charged): no call
        attempt = replace(attempt, charge_started_at=marked)
    try:
        result = charge(processor, attempt, customer_id=customer_id, description=description)
    except UnknownPaymentMethod:
        # The processor does not have this card (for this customer): nothing was charged.
        return fail(database, attempt, FailureReason.CARD_UNAVAILABLE, services=services)
    except Exception:
        mark_unknown(database, attempt)
        raise
    try:
        with database.transaction() as session:
            return record(session, attempt, result, card=card, services=services)
    except Exception:  # charged, and the outcome is not recorded: the janitor records it
        mark_unknown(database, attempt)
        raise


def charge_begun(
    database: Database, processor: Processor, begun: list[tuple[Attempt, str, str]]
) -> list[ChargeResult | None]:
    """`run`'s charges without their recording, for a caller that records many together
    (`settle_charged`): each attempt begun (and committed) by the caller, with the
    account's processor customer and the charge's description, charged in one
    `charge_many` call; the processor's answer to each, in order, or None where `run`
    would do anything else (the attempt settled meanwhile, its charge raised, the call as
    a whole failed). The caller then hands that attempt to `run`, which finds out again
    under the same key: the processor answers a charge it made under a key, and never
    charges a key twice."""
    answers: list[ChargeResult | None] = [None] * len(begun)
    to_charge: list[int] = []
    for n, (attempt, _, _) in enumerate(begun):
        if attempt.state.settled:
            continue
        if _mark_before_charge(attempt) and _charge_starts(database, attempt) is None:
            continue  # settled meanwhile
        to_charge.append(n)
    if not to_charge:
        return answers
    try:
        charged = processor.charge_many([_charge_request(*begun[n]) for n in to_charge])
    except Exception:
        log.warning("%d charges raised together; run settles each", len(to_charge), exc_info=True)
        return answers
    for n, answer in zip(to_charge, charged, strict=True):
        if isinstance(answer, ChargeResult):
            answers[n] = answer
        else:
            log.warning(
                "payment attempt %s: the charge raised %r; run settles it", begun[n][0].id, answer
            )
    return answers


def settle_charged(
    session: Session,
    charged: list[tuple[Attempt, ChargeResult]],
    *,
    services: Services | None = None,
) -> list[Settled]:
    """`record` for many successful charges of one purpose at once, whose rows the caller
    has locked first (the purpose's `locking`; its success handler is not called: the
    caller does what it would, for all of them together). The attempts still open are
    locked in id order and moved to succeeded by one executemany UPDATE, their janitor
    jobs dropped by one statement, their payments written by one INSERT. The outcomes of
    the attempts this call moved, in the order given; the others (settled meanwhile) are
    left out."""
    assert all(result.succeeded for _, result in charged), "successful charges only"
    row = _ATTEMPTS.c
    still_open = set(
        session.scalars(
            select(row.id)
            .where(row.id.in_([attempt.id for attempt, _ in charged]), row.state.in_(OPEN_STATES))
            .order_by(row.id)
            .with_for_update()
        )
    )
    moving = [(attempt, result) for attempt, result in charged if attempt.id in still_open]
    if not moving:
        return []
    current = now()
    session.execute(
        _settle_succeeded(),
        [
            {"a_id": attempt.id, "a_payment_id": result.payment_intent_id, "a_at": current}
            for attempt, result in moving
        ],
    )
    jobs.cancel(
        session,
        *(_janitor_key(attempt.id) for attempt, _ in moving),
        *(_first_look_key(attempt.id) for attempt, _ in moving),
    )
    paid = payments.record_new_payments(
        session, [_new_payment(attempt, result) for attempt, result in moving]
    )
    return [
        Settled(
            replace(
                attempt,
                state=AttemptState.SUCCEEDED,
                payment_id=result.payment_intent_id,
                failure_reason=None,
                failure_message=None,
                new=False,
            ),
            payment,
            services=services,
        )
        for (attempt, result), payment in zip(moving, paid, strict=True)
    ]


def _new_payment(attempt: Attempt, result: ChargeResult) -> payments.NewPayment:
    """The payment the processor's answer to an attempt's charge records."""
    return payments.NewPayment(
        account_id=attempt.account_id,
        purpose=attempt.payment_purpose,
        amount_micros=attempt.amount_micros,
        currency=attempt.currency,
        payment_method_id=attempt.payment_method_id,
        result=result,
    )


@cache
def _settle_succeeded() -> Update:
    """`_settle`'s UPDATE of a successful charge by a request, for an attempt locked open."""
    row = _ATTEMPTS.c
    return (
        update(_ATTEMPTS)
        .where(row.id == bindparam("a_id"))
        .values(
            state=AttemptState.SUCCEEDED.value,
            payment_id=bindparam("a_payment_id"),
            failure_reason=None,
            failure_message=None,
            settled_by="request",
            settled_at=bindparam("a_at"),
            updated_at=bindparam("a_at"),
        )
    )


def _mark_before_charge(attempt: Attempt) -> bool:
    """Whether the charge about to be made must first mark that it starts: always for an
    attempt begun earlier and joined open (its mark is another caller's); for one this
    caller began, when its mark is more than MARK_AGAIN_AFTER old (a slow customer or
    card check, a batch charged long after its reservation), so the janitor's STALE_AFTER
    wait always counts from no more than that before the processor call (plus, for a
    batch a processor charges one after another, `charge_each`'s budget: 50 s in all,
    well inside STALE_AFTER)."""
    if not attempt.new or attempt.charge_started_at is None:
        return True
    return wall_now() - as_utc(attempt.charge_started_at) > MARK_AGAIN_AFTER


def _charge_starts(database: Database, attempt: Attempt) -> datetime | None:
    """Before charging under the key of an attempt begun earlier (joined open: a job run
    again, a retried request; or begun long before, see `_mark_before_charge`): mark that
    a charge starts now (the mark; None, and nothing marked, if the attempt was settled
    meanwhile). The janitor settles an attempt as never charged only when no
    charge began in the STALE_AFTER before it asked the processor (`fail`'s
    `quiet_since`), so the two exclude each other: either this mark lands first and the
    janitor waits, or the janitor settles first and nothing is charged here."""
    mark = wall_now()
    with database.transaction() as session:
        marked = session.execute(
            update(PaymentAttempt)
            .where(PaymentAttempt.id == attempt.id, PaymentAttempt.state.in_(OPEN_STATES))
            .values(charge_started_at=mark)
        ).rowcount  # type: ignore[attr-defined]
    return mark if marked else None


class ChargeMayBeInFlight(RuntimeError):
    """The janitor found no charge, but one under the attempt's key began too recently
    to rule out that it is still on its way: it looks again later."""


def _not_charged(database: Database, attempt: Attempt, services: Services | None) -> None:
    """Something failed before the processor call."""
    if attempt.new:
        try:
            _fail_unjoined(database, attempt, FailureReason.NOT_CHARGED, services)
            return
        except ChargeMayBeInFlight:
            pass  # joined meanwhile: as below
    # An earlier run (or one that joined it) may have charged under this key: the janitor
    # finds out.
    mark_unknown(database, attempt)


def _fail_unjoined(
    database: Database, attempt: Attempt, reason: FailureReason, services: Services | None
) -> Outcome:
    """Settle an attempt this caller began, before its charge, as failed: only if nobody
    joined it since (whoever joins an open attempt marks its charge start before charging,
    and a batch's attempt stays open to others until its turn); else
    `ChargeMayBeInFlight`."""
    return fail(database, attempt, reason, services=services, unmarked=attempt.charge_started_at)


def replay(database: Database, attempt: Attempt) -> Outcome:
    """A settled attempt's outcome, as recorded."""
    with database.read() as session:
        current = get(session, attempt.id)
        assert current is not None
        payment = session.get(Payment, current.payment_id) if current.payment_id else None
    return Outcome(current, payment, recorded=False)


def mark_unknown(database: Database, attempt: Attempt) -> None:
    """The processor call raised: it may have charged. Best effort (the janitor settles
    a `pending` attempt just the same)."""
    try:
        with database.transaction() as session:
            session.execute(
                update(PaymentAttempt)
                .where(
                    PaymentAttempt.id == attempt.id,
                    PaymentAttempt.state == AttemptState.PENDING.value,
                )
                .values(state=AttemptState.UNKNOWN.value, updated_at=now())
            )
    except Exception:
        log.exception("could not mark payment attempt %s unknown", attempt.id)


def record(
    session: Session,
    attempt: Attempt,
    result: ChargeResult,
    *,
    card: Card | None = None,
    recovered: bool = False,
    services: Services | None = None,
) -> Outcome:
    """Record what the processor answered, once (see `_settle`)."""
    event = Settled(attempt, None, card=card, recovered=recovered, services=services)
    if result.succeeded:
        return _settle(session, event, AttemptState.SUCCEEDED, result, None)
    return _settle(session, event, AttemptState.FAILED, result, FailureReason.DECLINED)


def fail(
    database: Database,
    attempt: Attempt,
    reason: FailureReason,
    *,
    recovered: bool = False,
    services: Services | None = None,
    quiet_since: datetime | None = None,
    unmarked: datetime | None = None,
) -> Outcome:
    """Settle an attempt that made no charge as failed, once; with `quiet_since` (the
    janitor's never-charged verdict, in real time), only if no charge under its key began
    after it; with `unmarked`, only if its charge start is still that mark (else
    `ChargeMayBeInFlight`)."""
    event = Settled(attempt, None, recovered=recovered, services=services)
    with database.transaction() as session:
        return _settle(session, event, AttemptState.FAILED, None, reason, quiet_since, unmarked)


def _recorded_by_someone_else(
    session: Session, attempt: Attempt, result: ChargeResult | None
) -> Outcome:
    """`_settle`'s UPDATE moved nothing: the outcome someone else recorded, or
    `ChargeMayBeInFlight` if the attempt is still open (the janitor's `quiet_since`)."""
    settled = get(session, attempt.id)
    assert settled is not None
    if not settled.state.settled:
        raise ChargeMayBeInFlight(f"a charge under payment attempt {attempt.id} began lately")
    if result is not None and result.succeeded and settled.never_charged:
        log.error(
            "payment attempt %s was settled as never charged, but the processor "
            "charged it (%s): refund it at the processor",
            attempt.id,
            result.payment_intent_id,
        )
    payment = session.get(Payment, settled.payment_id) if settled.payment_id else None
    return Outcome(settled, payment, recorded=False)


_ATTEMPTS = cast(Table, PaymentAttempt.__table__)


def _settle(
    session: Session,
    event: Settled,
    state: AttemptState,
    result: ChargeResult | None,
    reason: FailureReason | None,
    quiet_since: datetime | None = None,
    unmarked: datetime | None = None,
) -> Outcome:
    """Move the attempt out of pending/unknown (a conditional UPDATE, after the purpose's
    locks); if this call moved it, record the payment and run the purpose's handlers."""
    attempt, recovered = event.attempt, event.recovered
    handlers = _HANDLERS[attempt.purpose]
    handlers.locking.publish(session, attempt)
    current = now()
    row = _ATTEMPTS.c
    conditions = [row.id == attempt.id, row.state.in_(OPEN_STATES)]
    if quiet_since is not None:
        conditions.append(func.coalesce(row.charge_started_at, row.created_at) <= quiet_since)
    if unmarked is not None:
        conditions.append(row.charge_started_at == unmarked)
    payment_id = result.payment_intent_id if result is not None else None
    message = (
        result.failure_message[:500] if result is not None and result.failure_message else None
    )
    moved = session.execute(
        update(_ATTEMPTS)  # the table: no loaded attempt to keep in step (see `get`)
        .where(*conditions)
        .values(
            state=state.value,
            payment_id=payment_id,
            failure_reason=reason.value if reason is not None else None,
            failure_message=message,
            settled_by="janitor" if recovered else "request",
            settled_at=current,
            updated_at=current,
        )
    ).rowcount  # type: ignore[attr-defined]
    if not moved:
        return _recorded_by_someone_else(session, attempt, result)
    # Moved by this UPDATE: the attempt is as written (nothing else of it changes).
    settled = replace(
        attempt,
        state=state,
        payment_id=payment_id,
        failure_reason=reason,
        failure_message=message,
        new=False,
    )
    jobs.cancel(session, _janitor_key(attempt.id), _first_look_key(attempt.id))
    payment = None
    if result is not None:
        payment, _ = payments.record_payment(session, _new_payment(attempt, result))
    event = replace(event, attempt=settled, payment=payment)
    if state == AttemptState.SUCCEEDED:
        value = handlers.succeeded.call(session, event)
    else:
        value = next((v for v in handlers.failed.publish(session, event) if v is not None), None)
    return Outcome(settled, payment, recorded=True, value=value)
