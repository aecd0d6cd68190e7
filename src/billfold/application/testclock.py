"""Advance the sandbox test clock, running each job as its due time is reached."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from billfold import clock
from billfold.application.jobs import Worker
from billfold.errors import ErrorCode, Forbidden
from billfold.jobs.models import Job
from billfold.services import Services
from billfold.testclock import service as testclock
from billfold.testclock.models import TestClock

MAX_JOBS_PER_ADVANCE = 20_000


def advance(services: Services, by: timedelta) -> dict[str, Any]:
    """Move the clock forward by `by`, running each job as its due time is reached."""
    if services.settings.processor != "sandbox":
        raise Forbidden(
            "The test clock only runs in sandbox mode.", code=ErrorCode.TEST_CLOCK_UNAVAILABLE
        )
    database = services.database
    with database.transaction() as session:
        row = session.get(TestClock, 1, with_for_update=True)
        if row is None:
            row = TestClock(id=1, offset_micros=testclock.micros(clock.offset()))
            session.add(row)
        current = max(timedelta(microseconds=row.offset_micros), clock.offset())
        final = current + by
        row.offset_micros = testclock.micros(final)
        row.updated_at = clock.wall_now()
    target = clock.wall_now() + final
    worker = Worker(services, worker_id="test-clock")
    ran = 0
    while ran < MAX_JOBS_PER_ADVANCE:
        with database.read() as session:
            due = session.scalar(
                select(func.min(Job.run_at)).where(Job.status == "queued", Job.run_at <= target)
            )
        if due is None:
            break
        step = clock.as_utc(due) - clock.wall_now()
        if step > clock.offset():
            clock.set_offset(step)
        batch = worker.drain()
        ran += batch
        if batch == 0:
            break  # the due job is held by another worker right now
    if final > clock.offset():
        clock.set_offset(final)
    ran += worker.drain()
    return {**testclock.state(), "advanced_seconds": int(by.total_seconds()), "jobs_run": ran}
