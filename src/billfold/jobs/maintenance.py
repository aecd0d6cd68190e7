"""Housekeeping on the job queue: forget expired idempotency keys and old rate-limit counters.

All on real time: idempotency retention and rate-limit windows know no test clock."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete
from sqlalchemy.orm import Session

from billfold.clock import wall_now
from billfold.idempotency import service as idempotency
from billfold.jobs import service as jobs
from billfold.jobs.service import ClaimedJob
from billfold.ratelimit import RateLimitCounter

if TYPE_CHECKING:
    from billfold.services import Services

log = logging.getLogger("billfold.worker")

JOB_KIND = "maintenance.purge"
INTERVAL = timedelta(hours=1)
COUNTER_RETENTION = timedelta(days=1)
PURGE_CHUNK = 5_000  # rows per transaction
PURGE_BUDGET = jobs.LEASE * 0.8  # per run


def schedule(session: Session) -> None:
    """Keep one purge queued (the dedupe key makes every worker's call after the first a no-op)."""
    jobs.enqueue(session, kind=JOB_KIND, run_at=wall_now() + INTERVAL, dedupe_key=JOB_KIND)


def run_purge(services: Services, job: ClaimedJob) -> None:
    """Forget expired Idempotency-Keys in chunks of about PURGE_CHUNK rows, one transaction
    each, for at most PURGE_BUDGET (well inside the job's lease): what is left waits for the
    next run. At thousands of charges a second an hour's keys are millions of rows, and one
    DELETE of them all would hold one long transaction and write its WAL at once. Old
    rate-limit counters (a row per login or payment key and window) go in one statement."""
    stop_at = time.monotonic() + PURGE_BUDGET.total_seconds()
    keys = 0
    while True:
        with services.database.transaction() as session:
            deleted = idempotency.purge_expired(session, limit=PURGE_CHUNK)
        keys += deleted
        if deleted < PURGE_CHUNK or time.monotonic() >= stop_at:
            break
    with services.database.transaction() as session:
        counters = session.execute(
            delete(RateLimitCounter).where(
                RateLimitCounter.window_start < wall_now() - COUNTER_RETENTION
            )
        ).rowcount  # type: ignore[attr-defined]
    log.info("purged %s expired idempotency keys and %s rate-limit counters", keys, counters)
