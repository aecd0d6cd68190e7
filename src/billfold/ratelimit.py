"""Rate limits kept in the database: attempts counted per key in fixed time windows.

One mechanism for every limit (logins, hosted-page payments, sandbox tokenization), so
all processes on one database share the counts. An attempt is *taken* before the work
it limits, in its own short committed transaction: one conditional `UPDATE … SET
count = count + 1 WHERE count < limit` per key, which the database serializes on the
counter row, so N concurrent attempts can never all pass a limit of n < N (a check
followed by a later write could). Keys of one attempt are taken all or nothing and in
sorted order, so two attempts never wait on each other's rows in opposite orders.
Windows are real time (`wall_now`), whatever test clock an account is on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Index, Integer, String, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from billfold.clock import wall_now
from billfold.db import Base, insert_or_ignore
from billfold.errors import RateLimited

KEY_LENGTH = 400


class RateLimitCounter(Base):
    """Attempts counted per key (``login:email:…``, ``pay:session:…``) in one window."""

    __tablename__ = "rate_limit_counters"

    key: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_rate_limit_counters_window_start", "window_start"),)


@dataclass(frozen=True)
class Limit:
    """At most `max_attempts` per `window_seconds` under `key`."""

    key: str
    max_attempts: int
    window_seconds: int


@dataclass(frozen=True)
class Taken:
    """One attempt counted under a key, in the window it was counted in."""

    key: str
    window_start: datetime


def stored_key(key: str) -> str:
    """The key as stored (callers build keys from bounded parts; this keeps it so)."""
    return key[:KEY_LENGTH]


def window_start(at: datetime, window_seconds: int) -> datetime:
    epoch = int(at.timestamp())
    return datetime.fromtimestamp(epoch - epoch % window_seconds, tz=at.tzinfo)


def take(session: Session, limits: Iterable[Limit], *, message: str) -> list[Taken]:
    """Count one attempt under every limit, or raise RateLimited (429) and count none.

    Run it in a transaction of its own: the caller's transaction rolling back on the
    raise is what undoes the keys already counted.
    """
    current = wall_now()
    taken: list[Taken] = []
    for limit in sorted(limits, key=lambda limit: limit.key):
        start = window_start(current, limit.window_seconds)
        key = stored_key(limit.key)
        insert_or_ignore(
            session,
            RateLimitCounter,
            {"key": key, "window_start": start, "count": 0},
            ["key", "window_start"],
        )
        counted = session.execute(
            update(RateLimitCounter)
            .where(
                RateLimitCounter.key == key,
                RateLimitCounter.window_start == start,
                RateLimitCounter.count < limit.max_attempts,
            )
            .values(count=RateLimitCounter.count + 1)
            .returning(RateLimitCounter.count)
        ).first()
        if counted is None:
            ends = start + timedelta(seconds=limit.window_seconds)
            retry_after = max(1, int((ends - current).total_seconds()) + 1)
            raise RateLimited(
                message,
                details={"retry_after_seconds": retry_after},
                headers={"Retry-After": str(retry_after)},
            )
        taken.append(Taken(key, start))
    return taken


def give_back(session: Session, taken: Sequence[Taken]) -> None:
    """Uncount attempts that turned out not to count (a login with the right password)."""
    for item in sorted(taken, key=lambda item: item.key):
        session.execute(
            update(RateLimitCounter)
            .where(
                RateLimitCounter.key == item.key,
                RateLimitCounter.window_start == item.window_start,
                RateLimitCounter.count > 0,
            )
            .values(count=RateLimitCounter.count - 1)
        )


def clear(session: Session, taken: Taken) -> None:
    """Forget every attempt counted under this key in its window."""
    session.execute(
        update(RateLimitCounter)
        .where(
            RateLimitCounter.key == taken.key,
            RateLimitCounter.window_start == taken.window_start,
        )
        .values(count=0)
    )


def count(session: Session, key: str, window_seconds: int) -> int:
    """Attempts counted under `key` in the current window (for tests and operators)."""
    row = session.get(RateLimitCounter, (stored_key(key), window_start(wall_now(), window_seconds)))
    return row.count if row is not None else 0
