"""The payment janitor: settles payment attempts left open, from what the processor knows.

An attempt stays `pending` when its process died between the charge and the recording,
and becomes `unknown` when the processor call raised (a timeout: it may have charged).
The janitor asks the processor what happened under the attempt's key (`find_charge`):
a charge it finds is recorded exactly as the request would have recorded it (the
purpose's handler runs once, in the recording transaction; `recovered` marks it); a
charge the processor never saw is settled failed (`not_charged`), and the purpose's
failure handlers give back what was reserved. It never starts a charge, and it settles
nothing as never charged while a charge under the attempt's key may still be on its way
(one began less than STALE_AFTER before it asked: a caller that joined the attempt open
marks `charge_started_at` before its call, or finds it settled and does not call).

Each attempt queues its own janitor jobs when it is written (cancelled when its outcome
is recorded): a first look after `FIRST_LOOK_AFTER`, and the check at `STALE_AFTER`;
while the processor cannot answer, rechecks follow (`run_janitor`). A processor webhook
(`payment_intent.succeeded`, …) settles an attempt the same way, sooner. A sweep, kept
queued by the worker's housekeeping every `SWEEP_INTERVAL`, settles whatever else is
open past `STALE_AFTER` (say a job whose retries ran out while the processor was down).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billfold import clock
from billfold.accounts.models import Account
from billfold.clock import now, wall_now
from billfold.jobs import service as jobs
from billfold.jobs.service import ClaimedJob
from billfold.payments.attempts import (
    JANITOR_JOB,
    STALE_AFTER,
    Attempt,
    ChargeMayBeInFlight,
    Outcome,
    begin,
    fail,
    get,
    mark_unknown,
    record,
)
from billfold.payments.models import OPEN_STATES, AttemptPurpose, FailureReason, PaymentAttempt
from billfold.processors.base import Card, ChargeResult, UnknownPaymentMethod
from billfold.testclock import service as testclock

if TYPE_CHECKING:
    from billfold.services import Services

log = logging.getLogger("billfold.payments")

SWEEP_INTERVAL = timedelta(minutes=10)
# When an attempt the processor could not answer for is checked again (from its start).
RECHECKS = (timedelta(hours=1), *(timedelta(days=day) for day in range(1, 8)))
SWEEP_BATCH = 100
_SWEEP_KEY = "payments.settle_attempts:sweep"

__all__ = [
    "JANITOR_JOB",
    "RECHECKS",
    "STALE_AFTER",
    "record_found",
    "run_janitor",
    "schedule_sweep",
    "settle",
    "sweep",
]


# --- the janitor --------------------------------------------------------------------


def settle(services: Services, attempt_id: str, *, found_only: bool = False) -> Outcome | None:
    """Settle an open attempt from what the processor knows (never starts a charge);
    None if it is settled already, or (`found_only`) the processor has no charge for it
    yet. Raises what the processor raises (unreachable, or the payment still in flight)."""
    with services.database.read() as session:
        attempt = get(session, attempt_id)
        if attempt is None or attempt.state.settled:
            return None
        customer_id = session.scalar(
            select(Account.processor_customer_id).where(Account.id == attempt.account_id)
        )
    processor = services.processor
    asked_at = wall_now()
    result = (
        processor.find_charge(attempt.key, customer_id=customer_id, since=attempt.created_at)
        if customer_id is not None  # no customer at the processor: nothing was ever charged
        else None
    )
    if result is None:
        if found_only:
            return None
        outcome = fail(
            services.database,
            attempt,
            FailureReason.NOT_CHARGED,
            recovered=True,
            services=services,
            # A charge begun since then could still be on its way: not settled now.
            quiet_since=asked_at - STALE_AFTER,
        )
        if outcome.recorded:
            log.warning("payment attempt %s never reached the processor", attempt.id)
        return outcome
    return record_found(services, attempt, result)


def record_found(services: Services, attempt: Attempt, result: ChargeResult) -> Outcome:
    """Record a charge the processor reports for an open attempt (the janitor's look, or a
    processor webhook), as the request would have recorded it."""
    processor = services.processor
    card: Card | None = None
    if result.succeeded and attempt.context.get("save_card"):
        try:
            card = processor.retrieve_payment_method(attempt.payment_method_id)
        except UnknownPaymentMethod:
            card = None
    with services.database.transaction() as session:
        outcome = record(session, attempt, result, card=card, recovered=True, services=services)
    if outcome.recorded:
        log.warning(
            "recorded interrupted card charge %s (%s, attempt %s)",
            result.payment_intent_id,
            attempt.purpose,
            attempt.id,
        )
    return outcome


def open_attempts(
    session: Session, *, older_than: datetime, limit: int
) -> list[tuple[str, str | None]]:
    """Attempts open whose charge began before `older_than` (real time), oldest first:
    each one's id and its account's test clock."""
    started = func.coalesce(PaymentAttempt.charge_started_at, PaymentAttempt.created_at)
    rows = session.execute(
        select(PaymentAttempt.id, Account.test_clock_id)
        .join(Account, Account.id == PaymentAttempt.account_id)
        .where(PaymentAttempt.state.in_(OPEN_STATES), started < older_than)
        .order_by(started, PaymentAttempt.id)
        .limit(limit)
    ).all()
    return [(str(attempt_id), clock_id) for attempt_id, clock_id in rows]


def sweep(services: Services, *, at: datetime | None = None) -> int:
    """Settle attempts left open past STALE_AFTER of real time (however their own job
    fared), each on its account's time (what its outcome queues is on that clock); the
    number settled."""
    older_than = (at or wall_now()) - STALE_AFTER
    with services.database.read() as session:
        stale = open_attempts(session, older_than=older_than, limit=SWEEP_BATCH)
    settled = 0
    for attempt_id, clock_id in stale:
        try:
            with clock.on(_clock_time(services, clock_id)):
                settled += settle(services, attempt_id) is not None
        except ChargeMayBeInFlight as exc:
            log.warning("payment attempt %s: not settled yet (%s)", attempt_id, exc)
        except Exception:  # the processor may be down: the next sweep tries again
            log.exception("could not settle payment attempt %s", attempt_id)
    return settled


def _clock_time(services: Services, test_clock_id: str | None) -> clock.ClockTime | None:
    if test_clock_id is None:
        return None
    with services.database.read() as session:
        return testclock.time_of(testclock.get(session, test_clock_id))


def schedule_sweep(session: Session) -> None:
    """Keep one sweep queued (every worker's call after the first is a no-op)."""
    jobs.enqueue(session, kind=JANITOR_JOB, run_at=now() + SWEEP_INTERVAL, dedupe_key=_SWEEP_KEY)


def run_janitor(services: Services, job: ClaimedJob) -> None:
    """The janitor job: one attempt's (queued with it, or a later check), or a sweep.

    An attempt's checks: a first look after a minute (records a charge the processor
    knows), then at STALE_AFTER (also settles one it never saw). While the processor
    cannot answer (unreachable, or the payment still in flight), the attempt is
    `unknown` and checked again after an hour, then daily for a week (`RECHECKS`); past
    that it stays `unknown`, listed for the operator (GET /api/admin/v1/payment-attempts
    ?state=unknown), and the sweep keeps trying."""
    attempt_id = job.payload.get("attempt_id")
    if attempt_id is None:
        sweep(services)
        return
    found_only = bool(job.payload.get("found_only"))
    try:
        settle(services, str(attempt_id), found_only=found_only)
    except Exception as exc:
        if isinstance(exc, ChargeMayBeInFlight):
            log.warning("payment attempt %s: not settled yet (%s)", attempt_id, exc)
        else:
            log.exception("could not settle payment attempt %s", attempt_id)
        if found_only:
            return  # the check at STALE_AFTER follows anyway
        with services.database.read() as session:
            attempt = get(session, str(attempt_id))
        if attempt is None:
            return
        mark_unknown(services.database, attempt)
        recheck = int(job.payload.get("recheck", -1)) + 1
        if recheck < len(RECHECKS):
            with services.database.transaction() as session:
                jobs.enqueue(
                    session,
                    kind=JANITOR_JOB,
                    account_id=attempt.account_id,
                    payload={"attempt_id": attempt.id, "recheck": recheck},
                    run_at=attempt.created_at + RECHECKS[recheck],
                    dedupe_key=f"attempt:{attempt.id}:recheck:{recheck}",
                )
        else:
            log.error(
                "payment attempt %s is still unknown after a week: see "
                "GET /api/admin/v1/payment-attempts?state=unknown",
                attempt.id,
            )


# --- recovery jobs queued before this machine existed -------------------------------

LEGACY_RECOVERY_JOB = "payments.recover_charge"
_LEGACY_PURPOSES = {
    "wallet_funding": AttemptPurpose.WALLET_FUNDING,
    "subscription_charge": AttemptPurpose.CHARGE_AMOUNT,
    "coupon_purchase": AttemptPurpose.COUPON_PURCHASE,
    "checkout": AttemptPurpose.CHECKOUT,
    "subscription_checkout": AttemptPurpose.CHECKOUT,
}


def run_legacy_recovery(services: Services, job: ClaimedJob) -> None:
    """A recovery job of the previous design (a charge's description as payload): its
    charge becomes an attempt, settled by the janitor like any other."""
    charge = job.payload
    key = str(charge["processor_key"])
    context: dict[str, Any] = {"save_card": bool(charge.get("save_card"))}
    for name in ("checkout_session_id", "coupon_redemption_id", "plan_id"):
        if charge.get(name) is not None:
            context[name] = charge[name]
    if charge.get("checkout_session_id"):
        context["attempt"] = int(key.rsplit(":", 1)[1])  # checkout:<session>:<n>
    with services.database.transaction() as session:
        attempt = begin(
            session,
            purpose=_LEGACY_PURPOSES[str(charge["purpose"])],
            operation=key,
            account_id=str(charge["account_id"]),
            amount_micros=int(charge["amount_micros"]),
            currency=str(charge["currency"]),
            payment_method_id=str(charge["payment_method_id"]),
            payment_purpose=str(charge["purpose"]),
            context=context,
        )
    settle(services, attempt.id)
