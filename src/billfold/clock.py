"""The service's single source of time: real time, or the time of a test clock.

Two times, one rule for which to ask:

- `now()` is the time *of the account being served*: periods, renewals, dunning, the
  expiry of its payment links and credits, the schedule of its jobs, the timestamps of
  its rows. For an account on a sandbox test clock (`billfold.testclock`) that is the
  clock's time; for every other account it is real time.
- `wall_now()` is the machine's time, for what other parties or the operator measure
  in real time: agent-token lifetimes, idempotency-key retention, rate-limit windows,
  webhook signatures and deliveries, signed links, job leases.

Which clock `now()` reads is held in a context variable, set by whoever runs a use case
for an account: the HTTP layer once it knows the account (the agent's token, an admin
request naming an account, a hosted payment page), the worker for each job of a clock,
and a test clock's advance. Threads and asyncio tasks each see their own, so requests
for accounts on different clocks never see each other's time. A test clock runs on at
real speed between advances (rows written one after another keep their order); it
stores only its offset from real time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class ClockTime:
    """A test clock as one use case sees it: its id and how far it is from real time."""

    test_clock_id: str
    offset: timedelta

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


_current: ContextVar[ClockTime | None] = ContextVar("billfold_test_clock", default=None)


def now() -> datetime:
    """The current account's time, timezone-aware UTC (real time off a test clock)."""
    current = _current.get()
    return datetime.now(UTC) + current.offset if current is not None else datetime.now(UTC)


def wall_now() -> datetime:
    """The machine's time, whatever test clock the current account is on."""
    return datetime.now(UTC)


def current_test_clock() -> str | None:
    """The id of the test clock `now()` reads, None on real time."""
    current = _current.get()
    return current.test_clock_id if current is not None else None


@contextmanager
def on_test_clock(test_clock_id: str, offset: timedelta) -> Iterator[ClockTime]:
    """Run the block on a test clock's time (`offset` from real time)."""
    token = _current.set(ClockTime(test_clock_id, offset))
    try:
        yield ClockTime(test_clock_id, offset)
    finally:
        _current.reset(token)


@contextmanager
def on(time: ClockTime | None) -> Iterator[None]:
    """Run the block on `time`: a test clock's, or real time (None)."""
    if time is None:
        with real_time():
            yield
    else:
        with on_test_clock(time.test_clock_id, time.offset):
            yield


@contextmanager
def real_time() -> Iterator[None]:
    """Run the block on real time, whatever clock the caller was on."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


def use(time: ClockTime | None) -> None:
    """Put the rest of this context on `time` (None: real time). For request handlers
    whose context ends with the request (an asyncio task per request); elsewhere use
    the `on_test_clock` block."""
    _current.set(time)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every datetime Billfold stores is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
