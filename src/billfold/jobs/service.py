"""Enqueue, claim and finish durable jobs.

Jobs are rows in the same database, inserted in the caller's transaction, so work
is never lost to a crash between a change and its follow-up. Workers claim due jobs
with `FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite serializes writers anyway) and
hold a lease: a job whose worker died is claimed again when its lease runs out, so
every handler must be idempotent (processor calls carry `job:<id>` as their key).

Each job belongs to a lane (`Lane`), and each lane is claimed by its own pool of worker
threads, so a slow webhook receiver holds up other deliveries at most, never money work.
Jobs may share a concurrency key: at most MAX_RUNNING_PER_KEY of them run at once. A
claim gives such a job the lowest free slot number of its key (one job per key per
claim), and a unique index on (key, slot) over running jobs makes two workers that
picked the same slot at the same moment collide in the database: the second one skips
that job.

Time: a job enqueued while a use case runs on an account's sandbox test clock
(`billfold.clock`) belongs to that clock. Its `run_at` is on the clock's time, and only
a claim for that clock takes it (the clock's advance, stepping through its due jobs in
time order), so real-time workers never run it early or late. Every other job, and every
webhook delivery (they talk to other servers, on real time), is on real time. Leases are
always real time: they time out crashed workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, func, insert, literal_column, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billfold.clock import current_test_clock, now, wall_now
from billfold.db import insert_or_ignore
from billfold.jobs.models import Job, Lane

LEASE = timedelta(minutes=5)
MAX_RUNNING_PER_KEY = 2
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
    test_clock_id: str | None = None


def enqueue(
    session: Session,
    *,
    kind: str,
    account_id: str | None = None,
    payload: dict[str, Any] | None = None,
    run_at: datetime | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = 8,
    lane: Lane = Lane.DEFAULT,
    concurrency_key: str | None = None,
) -> bool:
    """Add a job to the caller's transaction. False if an active job has the same dedupe key.

    The job is on the test clock the caller runs on (see the module docstring), unless it
    is a webhook delivery; `run_at` is on that time."""
    return enqueue_job(
        session,
        NewJob(kind, account_id, payload, run_at, dedupe_key, max_attempts, lane, concurrency_key),
    )


def enqueue_job(session: Session, job: NewJob) -> bool:
    """`enqueue` of a `NewJob`."""
    values = _values(job)
    dedupe_key = job.dedupe_key
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


@dataclass(frozen=True)
class NewJob:
    """A job for `enqueue_new`, with `enqueue`'s arguments."""

    kind: str
    account_id: str | None = None
    payload: dict[str, Any] | None = None
    run_at: datetime | None = None
    dedupe_key: str | None = None
    max_attempts: int = 8
    lane: Lane = Lane.DEFAULT
    concurrency_key: str | None = None


def enqueue_new(session: Session, new: list[NewJob]) -> None:
    """Add jobs in one multi-row INSERT, for dedupe keys no other job can hold (made from
    rows the caller's transaction just wrote): a duplicate is a bug, and raises."""
    if new:
        session.execute(insert(_JOBS), [_values(job) for job in new])


def _values(job: NewJob) -> dict[str, Any]:
    test_clock_id = current_test_clock() if job.lane != Lane.WEBHOOKS else None
    return {
        "kind": job.kind,
        "lane": job.lane,
        "concurrency_key": job.concurrency_key,
        "account_id": job.account_id,
        "test_clock_id": test_clock_id,
        "payload": job.payload or {},
        "status": "queued",
        "run_at": job.run_at or (now() if test_clock_id else wall_now()),
        "attempts": 0,
        "max_attempts": job.max_attempts,
        "dedupe_key": job.dedupe_key,
        "created_at": wall_now(),
    }


# The table, not the entity: no Job object is ever loaded here to keep in step with a
# statement, and the ORM's handling of a statement costs more CPU than the SQL (see
# bench/statement_cpu.py).
_JOBS = cast(Table, Job.__table__)
_J = _JOBS.c

_CLAIMED = (
    _J.id,
    _J.kind,
    _J.account_id,
    _J.payload,
    _J.attempts,
    _J.max_attempts,
    _J.test_clock_id,
)


def claim(
    session: Session,
    *,
    worker_id: str,
    limit: int,
    lane: Lane | None = None,
    at: datetime | None = None,
    test_clock_id: str | None = None,
    kind: str | None = None,
) -> list[ClaimedJob]:
    """Take up to `limit` due jobs of `lane` (every lane: None), or of one `kind`, for
    this worker, skipping those whose concurrency key has no free slot (the caller
    commits the claim).

    Real-time jobs due at `at` (default: now), or with `test_clock_id` that clock's jobs
    due at `at` on its time (default: `now()`, which the caller runs on the clock's time)."""
    if test_clock_id is None:
        current = lease_cutoff = at or wall_now()
    else:
        current, lease_cutoff = at or now(), wall_now()
    others = _JOBS.alias()
    other = others.c
    running_with_same_key = (
        select(func.count())
        .select_from(others)
        .where(
            other.concurrency_key == _J.concurrency_key,
            other.status == _RUNNING,
            other.id != _J.id,
        )
        .scalar_subquery()
    )
    due = (
        select(_J.id, _J.concurrency_key, _J.slot)
        .where(
            or_(
                (_J.status == "queued") & (_J.run_at <= current),
                (_J.status == "running") & (_J.locked_until < lease_cutoff),
            ),
            or_(_J.concurrency_key.is_(None), running_with_same_key < MAX_RUNNING_PER_KEY),
            _J.test_clock_id.is_(None)
            if test_clock_id is None
            else _J.test_clock_id == test_clock_id,
        )
        .order_by(_J.run_at, _J.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=_JOBS)
    )
    if lane is not None:
        due = due.where(_J.lane == lane)
    if kind is not None:
        due = due.where(_J.kind == kind)
    candidates = session.execute(due).all()
    lease = {
        "status": "running",
        "attempts": _J.attempts + 1,
        "locked_by": worker_id,
        "locked_until": lease_cutoff + LEASE,
    }
    rows: list[Any] = []
    free = [job_id for job_id, key, _ in candidates if key is None]
    if free:
        rows += session.execute(
            update(_JOBS).where(_J.id.in_(free)).values(**lease).returning(*_CLAIMED)
        ).all()
    # One job per key per claim, keys in one order for every claimer: then no two claims
    # can wait on each other's new slots (a deadlock), only one on the other.
    keyed: dict[str, tuple[int, int | None]] = {}
    for job_id, key, held in candidates:
        if key is not None and key not in keyed:
            keyed[key] = (job_id, held)
    for key, (job_id, held) in sorted(keyed.items()):
        row = _claim_slot(session, job_id, key, held, lease)
        if row is not None:
            rows.append(row)
    return [ClaimedJob(*row) for row in sorted(rows, key=lambda r: r[0])]


def _claim_slot(
    session: Session, job_id: int, key: str, held: int | None, lease: dict[str, Any]
) -> Any:
    """Lease one keyed job in the lowest free slot of its key (a job whose lease ran out
    keeps its own); None if every slot is taken, or another worker just took ours."""
    taken = set(
        session.scalars(
            select(_J.slot).where(_J.concurrency_key == key, _J.status == _RUNNING, _J.id != job_id)
        )
    )
    free = [slot for slot in range(MAX_RUNNING_PER_KEY) if slot not in taken]
    if not free:
        return None
    slot = held if held in free else free[0]
    try:
        with session.begin_nested():
            return session.execute(
                update(_JOBS).where(_J.id == job_id).values(**lease, slot=slot).returning(*_CLAIMED)
            ).one()
    except IntegrityError:
        return None


def succeed(session: Session, job: ClaimedJob, *, worker_id: str) -> bool:
    """Mark done in the handler's own transaction; False if the lease was lost meanwhile."""
    done = session.execute(
        update(_JOBS)
        .where(_J.id == job.id, _J.status == "running", _J.locked_by == worker_id)
        .values(**_succeeded())
    ).rowcount  # type: ignore[attr-defined]
    return bool(done)


def _succeeded() -> dict[str, Any]:
    """What marking a job done writes."""
    return {
        "status": "succeeded",
        "finished_at": wall_now(),
        "locked_until": None,
        "slot": None,
        "last_error": None,
    }


def succeed_many(session: Session, done: list[ClaimedJob], *, worker_id: str) -> set[int]:
    """Mark several jobs done in one UPDATE (a batch's, after its last one ran); the ids
    of those whose lease was not lost meanwhile."""
    marked = session.scalars(
        update(_JOBS)
        .where(
            _J.id.in_([job.id for job in done]),
            _J.status == "running",
            _J.locked_by == worker_id,
        )
        .values(**_succeeded())
        .returning(_J.id)
    )
    return set(marked)


def fail(session: Session, job: ClaimedJob, *, worker_id: str, error: str) -> None:
    """Schedule a retry with backoff (on the job's clock's time: the caller runs a clock's
    job on it), or bury the job once its attempts are spent."""
    current = now() if job.test_clock_id is not None else wall_now()
    if job.attempts >= job.max_attempts:
        values: dict[str, Any] = {"status": "dead", "finished_at": wall_now()}
    else:
        delay = BACKOFF[job.attempts - 1] if job.attempts - 1 < len(BACKOFF) else LAST_BACKOFF
        values = {"status": "queued", "run_at": current + delay}
    session.execute(
        update(_JOBS)
        .where(_J.id == job.id, _J.status == "running", _J.locked_by == worker_id)
        .values(**values, locked_until=None, slot=None, last_error=error[:4000])
    )


def release_leases(session: Session, *, worker_prefix: str) -> int:
    """Hand back the running jobs of workers whose id starts with `worker_prefix` (a
    process that was killed): queued again, due now, for any worker to take at once
    rather than when their leases run out. Their attempt stays counted, as a crash's.
    How many were handed back."""
    released = session.execute(
        update(_JOBS)
        .where(_J.status == "running", _J.locked_by.startswith(worker_prefix, autoescape=True))
        .values(status="queued", run_at=wall_now(), locked_by=None, locked_until=None, slot=None)
    ).rowcount  # type: ignore[attr-defined]
    return int(released)


def hand_back(session: Session, jobs: list[ClaimedJob], *, worker_id: str) -> None:
    """Give claimed jobs that were not started back to the queue, due now, for any worker
    (their attempt not counted: they never ran)."""
    session.execute(
        update(_JOBS)
        .where(
            _J.id.in_([job.id for job in jobs]),
            _J.status == "running",
            _J.locked_by == worker_id,
        )
        .values(
            status="queued",
            attempts=_J.attempts - 1,
            locked_by=None,
            locked_until=None,
            slot=None,
        )
    )


_QUEUED: ColumnElement[str] = literal_column("'queued'")
# As `_QUEUED`, for the running slots of a concurrency key (`uq_jobs_running_slot`).
_RUNNING: ColumnElement[str] = literal_column("'running'")


def cancel(session: Session, *dedupe_keys: str) -> None:
    """Drop queued jobs that are no longer needed (their work was done another way).

    The status is written into the SQL, not bound: only then can PostgreSQL's plan for
    the prepared statement use the partial index of active dedupe keys (a bound status
    cannot be proved to lie in its predicate), instead of visiting every queued job, of
    which there is one per subscription (its next renewal)."""
    job = _JOBS.c  # the table: no loaded job to keep in step
    session.execute(
        update(_JOBS)
        .where(job.dedupe_key.in_(dedupe_keys), job.status == _QUEUED)
        .values(status="succeeded", finished_at=wall_now(), last_error="cancelled: not needed")
    )


@dataclass(frozen=True)
class LaneBacklog:
    """One lane's real-time work: jobs due and waiting for a worker, jobs running, and
    when the longest-waiting due job fell due (None: nothing waits)."""

    due: int
    running: int
    oldest_due_at: datetime | None


def backlog(session: Session, *, at: datetime | None = None) -> dict[Lane, LaneBacklog]:
    """Every lane's backlog at `at` (default: now), in one aggregate query over the
    indexed (lane, status, run_at): cheap enough to run on every metrics scrape.

    Jobs on a test clock are left out (only their clock's advance runs them), as are
    queued jobs not yet due (next month's renewal is not a backlog)."""
    current = at or wall_now()
    is_due = (Job.status == "queued") & (Job.run_at <= current)
    rows = session.execute(
        select(
            Job.lane,
            func.count().filter(is_due),
            func.count().filter(Job.status == "running"),
            func.min(Job.run_at).filter(is_due),
        )
        .where(or_(is_due, Job.status == "running"), Job.test_clock_id.is_(None))
        .group_by(Job.lane)
    ).all()
    found = {
        lane: LaneBacklog(due=due, running=running, oldest_due_at=oldest)
        for lane, due, running, oldest in rows
    }
    return {lane: found.get(lane, LaneBacklog(0, 0, None)) for lane in Lane}
