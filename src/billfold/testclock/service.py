"""Sandbox test clocks (Stripe's model): an account created on a clock lives on its time.

A clock is stored as its offset from real time, so every process on the database reads
the same time from one row and nothing is cached in a process. Its time runs on at real
speed and jumps forward when it is advanced (`billfold.application.testclock`), never
back. Accounts not on a clock live on real time. `billfold.clock` says which time each
piece of work reads.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from billfold.clock import ClockTime, wall_now
from billfold.errors import ErrorCode, InvalidRequest, NotFound
from billfold.ids import new_id
from billfold.testclock.models import TestClock

# How far from real time a clock may be (a start time, or after advances), so that
# every date a clock's accounts compute stays far inside what datetimes can hold.
MAX_DISTANCE = timedelta(days=100 * 366)


def micros(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def offset_of(row: TestClock) -> timedelta:
    return timedelta(microseconds=row.offset_micros)


def time_of(row: TestClock) -> ClockTime:
    """The clock as `billfold.clock.on_test_clock` takes it."""
    return ClockTime(row.id, offset_of(row))


def _within_reach(offset: timedelta, field: str) -> None:
    if abs(offset) > MAX_DISTANCE:
        raise InvalidRequest(
            "A test clock may be at most 100 years from real time.", details={"field": field}
        )


def create(session: Session, *, name: str, starts_at: datetime | None = None) -> TestClock:
    """A new clock at `starts_at` (real time if None), running on from there."""
    created = wall_now()
    offset = starts_at - created if starts_at is not None else timedelta(0)
    _within_reach(offset, "frozen_time")
    row = TestClock(
        id=new_id("clock"),
        name=name,
        offset_micros=micros(offset),
        created_at=created,
        updated_at=created,
    )
    session.add(row)
    session.flush()
    return row


def get(session: Session, test_clock_id: str, *, for_update: bool = False) -> TestClock:
    row = session.get(TestClock, test_clock_id, with_for_update=for_update)
    if row is None:
        raise NotFound(
            "No such test clock.",
            code=ErrorCode.TEST_CLOCK_NOT_FOUND,
            details={"test_clock_id": test_clock_id},
        )
    return row


def move_forward(
    session: Session, test_clock_id: str, by: timedelta
) -> tuple[ClockTime, ClockTime]:
    """Add `by` to the clock's offset, under its row lock (two advances add up); the
    clock before and after."""
    row = get(session, test_clock_id, for_update=True)
    before = time_of(row)
    after = before.offset + by
    _within_reach(after, "days")
    row.offset_micros = micros(after)
    row.updated_at = wall_now()
    return before, ClockTime(row.id, after)


def view(row: TestClock) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "now": time_of(row).now(),
        "created_at": row.created_at,
    }
