"""The service's single source of time.

Everything that decides by time (periods, renewals, dunning, expiry, token lifetimes,
job schedules) asks `now()`. In sandbox mode the operator's test clock moves it ahead
by an offset (see `billfold.testclock`), so months of subscription life can be lived
through in seconds; `wall_now()` is the machine's own time, for the few things that
must match other machines' clocks (webhook signature timestamps).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_offset = timedelta(0)


def now() -> datetime:
    """Current service time, timezone-aware UTC."""
    return datetime.now(UTC) + _offset


def wall_now() -> datetime:
    """The machine's time, ignoring any test-clock offset."""
    return datetime.now(UTC)


def offset() -> timedelta:
    return _offset


def set_offset(value: timedelta) -> None:
    """Move this process's clock (the test clock persists and shares it)."""
    global _offset
    _offset = value


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every datetime Billfold stores is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
