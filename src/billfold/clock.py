"""The service's single source of time (a test clock can move it in sandbox mode later)."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """Current time, timezone-aware UTC, truncated to microseconds as the database keeps it."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every datetime Billfold stores is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
