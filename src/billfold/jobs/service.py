"""Enqueue, claim and finish durable jobs.

Jobs are rows in the same database, inserted in the caller's transaction, so work
is never lost to a crash between a change and its follow-up. Workers claim due jobs
with `FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite serializes writers anyway) and
hold a lease: a job whose worker died is claimed again when its lease runs out, so
every handler must be idempotent (processor calls carry `job:<id>` as their key).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from billfold.clock import now
from billfold.db import insert_or_ignore
from billfold.jobs.models import Job

LEASE = timedelta(minutes=5)
# Retry schedule after a failed attempt: 10 s, 1 min, 5 min, 30 min, 2 h, then 6 h.
BACKOFF = [
    timedelta(seconds=10),
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
]
LAST_BACKOFF = timedelta(hours=6)


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    account_id: str | None
    payload: dict[str, Any]
    attempts: int
    max_attempts: int


def enqueue(
    session: Session,
    *,
    kind: str,
    account_id: str | None = None,
    payload: dict[str, Any] | None = None,
    run_at: datetime | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = 8,
) -> bool:
    """Add a job to the caller's transaction. False if an active job has the same dedupe key."""
    values = {
        "kind": kind,
        "account_id": account_id,
        "payload": payload or {},
        "status": "queued",
        "run_at": run_at or now(),
        "attempts": 0,
        "max_attempts": max_attempts,
        "dedupe_key": dedupe_key,
        "created_at": now(),
    }
    if dedupe_key is None:
        session.add(Job(**values))
        return True
    return insert_or_ignore(
        session,
        Job,
        values,
        ["dedupe_key"],
        index_where="status IN ('queued', 'running')",
    )


def claim(
    session: Session, *, worker_id: str, limit: int, at: datetime | None = None
) -> list[ClaimedJob]:
    """Take up to `limit` due jobs for this worker (the caller commits the claim)."""
    current = at or now()
    due = (
        select(Job.id)
        .where(
            or_(
                (Job.status == "queued") & (Job.run_at <= current),
                (Job.status == "running") & (Job.locked_until < current),
            )
        )
        .order_by(Job.run_at, Job.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(session.scalars(due))
    if not ids:
        return []
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(ids))
        .values(
            status="running",
            attempts=Job.attempts + 1,
            locked_by=worker_id,
            locked_until=current + LEASE,
        )
        .returning(Job.id, Job.kind, Job.account_id, Job.payload, Job.attempts, Job.max_attempts)
    ).all()
    return [ClaimedJob(*row) for row in sorted(rows, key=lambda r: r[0])]


def succeed(session: Session, job: ClaimedJob, *, worker_id: str) -> bool:
    """Mark done in the handler's own transaction; False if the lease was lost meanwhile."""
    done = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == "running", Job.locked_by == worker_id)
        .values(status="succeeded", finished_at=now(), locked_until=None, last_error=None)
    ).rowcount  # type: ignore[attr-defined]
    return bool(done)


def fail(session: Session, job: ClaimedJob, *, worker_id: str, error: str) -> None:
    """Schedule a retry with backoff, or bury the job once its attempts are spent."""
    current = now()
    if job.attempts >= job.max_attempts:
        values: dict[str, Any] = {"status": "dead", "finished_at": current}
    else:
        delay = BACKOFF[job.attempts - 1] if job.attempts - 1 < len(BACKOFF) else LAST_BACKOFF
        values = {"status": "queued", "run_at": current + delay}
    session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == "running", Job.locked_by == worker_id)
        .values(**values, locked_until=None, last_error=error[:4000])
    )


def cancel(session: Session, *, dedupe_key: str) -> None:
    """Drop a queued job that is no longer needed (its work was done another way)."""
    session.execute(
        update(Job)
        .where(Job.dedupe_key == dedupe_key, Job.status == "queued")
        .values(status="succeeded", finished_at=now(), last_error="cancelled: not needed")
    )
