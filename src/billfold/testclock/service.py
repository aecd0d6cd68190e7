"""The sandbox test clock: move the service's time forward and run what fell due.

The offset is stored in the database (one row) so every process on it agrees; each
process applies it to `billfold.clock` at start-up and its worker re-reads it on every
poll. Advancing walks through the due jobs in time order, stopping the clock at each
one's due time, so a renewal runs at its period's end and the dunning retry it
schedules a day later runs a day later, even when one call moves a whole year.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from billfold import clock
from billfold.db import Database
from billfold.testclock.models import TestClock


def micros(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


_last_sync = 0.0
SYNC_INTERVAL = 1.0  # seconds: how stale another process's advance may be seen here


def _stored(database: Database) -> timedelta:
    with database.read() as session:
        row = session.get(TestClock, 1)
        return timedelta(microseconds=row.offset_micros) if row else timedelta(0)


def sync(database: Database) -> None:
    """Apply the stored offset to this process's clock (never moving it back)."""
    global _last_sync
    stored = _stored(database)
    if stored > clock.offset():
        clock.set_offset(stored)
    _last_sync = time.monotonic()


def sync_if_stale(database: Database) -> None:
    """For API processes in sandbox mode: pick up another process's advance within a
    second, at the cost of one primary-key read a second."""
    if time.monotonic() - _last_sync >= SYNC_INTERVAL:
        sync(database)


def load(database: Database) -> None:
    """At start-up: this database's clock, whatever this process ran before."""
    clock.set_offset(_stored(database))


def state() -> dict[str, Any]:
    return {
        "now": clock.now(),
        "offset_seconds": int(clock.offset().total_seconds()),
    }
