"""Sandbox test clocks as use cases: create one, read one, advance one, and run a use case
on an account's time.

How time flows (the rule lives in `billfold.clock`): an account created on a clock lives
on its time. Every use case for such an account runs with `clock.now()` reading the
clock (`on_account_clock`, or the HTTP layer's dependencies), so what it stores and the
jobs it queues are on the clock's time, and those jobs belong to the clock
(`billfold.jobs.service`). Real-time workers never take them: advancing a clock walks
through its due jobs in time order, stopping the clock at each one's due time, so a
renewal runs at its period's end and the dunning retry it schedules a day later runs a
day later, even when one call moves a whole year. Other clocks and real-time accounts
are not touched, and two clocks can be advanced at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billfold import clock
from billfold.accounts import service as accounts
from billfold.accounts.models import Account
from billfold.application.jobs import Worker
from billfold.errors import ErrorCode, Forbidden
from billfold.jobs.models import Job
from billfold.services import Services
from billfold.testclock import service as testclock

MAX_JOBS_PER_ADVANCE = 20_000
MAX_REMEMBERED_ACCOUNTS = 100_000  # accounts whose clock a process remembers


def require_test_mode(services: Services) -> None:
    """Test clocks run in test mode only: the sandbox, or Stripe with test keys."""
    if not services.processor.test_mode:
        raise Forbidden(
            "Test clocks only run in test mode (the sandbox or Stripe test keys).",
            code=ErrorCode.TEST_CLOCK_UNAVAILABLE,
        )


def create_clock(
    services: Services, session: Session, *, name: str, frozen_time: datetime | None = None
) -> dict[str, Any]:
    """A new clock at `frozen_time` (now if None), running on from there (an atomic use
    case: in the caller's transaction)."""
    require_test_mode(services)
    return testclock.view(testclock.create(session, name=name, starts_at=frozen_time))


def get_clock(services: Services, test_clock_id: str) -> dict[str, Any]:
    require_test_mode(services)
    with services.database.read() as session:
        return testclock.view(testclock.get(session, test_clock_id))


def clock_time(services: Services, test_clock_id: str) -> clock.ClockTime:
    """A clock's current time (404 if there is no such clock)."""
    require_test_mode(services)
    with services.database.read() as session:
        return testclock.time_of(testclock.get(session, test_clock_id))


def account_clock(services: Services, account_id: str) -> clock.ClockTime | None:
    """The clock an account lives on (None: real time; always None off the sandbox).

    Which clock (or none) an existing account lives on never changes, so the process
    remembers it: an account on real time costs no query, one on a clock one (its time
    moves). An unknown account is not remembered (it may be created later)."""
    if not services.processor.test_mode:
        return None
    known = services.account_clock_ids
    if account_id in known and known[account_id] is None:
        return None
    with services.database.read() as session:
        if account_id not in known:
            exists, clock_id = accounts.clock_id_of(session, account_id)
            if not exists:
                return None
            if len(known) >= MAX_REMEMBERED_ACCOUNTS:
                known.clear()
            known[account_id] = clock_id
        clock_id = known[account_id]
        return testclock.time_of(testclock.get(session, clock_id)) if clock_id else None


def on_real_time(services: Services, account_id: str) -> bool:
    """True when the account is known (to this process) to live on real time: its clock
    needs no query, nor a worker thread to run one."""
    return not services.processor.test_mode or (
        account_id in services.account_clock_ids and services.account_clock_ids[account_id] is None
    )


@contextmanager
def on_account_clock(services: Services, account_id: str) -> Iterator[None]:
    """Run a use case for `account_id` on its time (for front ends without a request
    dependency to do it: the CLI, an MCP tool, a test)."""
    with clock.on(account_clock(services, account_id)):
        yield


def open_account(
    services: Services,
    session: Session,
    *,
    email: str,
    password: str,
    currency: str,
    test_clock_id: str | None = None,
) -> Account:
    """Create an account with its wallet, on a test clock if one is named (403 off the
    sandbox, 404 if there is no such clock): born on the clock's time."""
    if test_clock_id is None:
        return accounts.create_account(session, email=email, password=password, currency=currency)
    require_test_mode(services)
    time = testclock.time_of(testclock.get(session, test_clock_id))
    with clock.on_test_clock(time.test_clock_id, time.offset):
        account = accounts.create_account(
            session,
            email=email,
            password=password,
            currency=currency,
            test_clock_id=test_clock_id,
        )
        session.flush()  # column defaults (the wallet's times) are taken on the clock's time
    return account


def advance(services: Services, test_clock_id: str, by: timedelta) -> dict[str, Any]:
    """Move one clock forward by `by`, running its jobs as their due times are reached."""
    require_test_mode(services)
    database = services.database
    with database.transaction() as session:
        before, after = testclock.move_forward(session, test_clock_id, by)
    target = clock.wall_now() + after.offset
    worker = Worker(services, worker_id=f"{test_clock_id}:advance", test_clock_id=test_clock_id)
    offset = before.offset
    ran = 0
    while ran < MAX_JOBS_PER_ADVANCE:
        with database.read() as session:
            due = session.scalar(
                select(func.min(Job.run_at)).where(
                    Job.test_clock_id == test_clock_id,
                    Job.status == "queued",
                    Job.run_at <= target,
                )
            )
        if due is None:
            break
        offset = max(offset, clock.as_utc(due) - clock.wall_now())  # never back
        with clock.on_test_clock(test_clock_id, offset):
            batch = worker.drain()
        ran += batch
        if batch == 0:
            break  # the due job is held by another worker right now
    with clock.on_test_clock(test_clock_id, after.offset):
        ran += worker.drain()
    with database.read() as session:
        view = testclock.view(testclock.get(session, test_clock_id))
    return {**view, "advanced_seconds": int(by.total_seconds()), "jobs_run": ran}
