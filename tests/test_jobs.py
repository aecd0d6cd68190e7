"""The durable job queue: claims, leases, retries with backoff, dedupe, many workers."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from billfold.application.jobs import Worker
from billfold.clock import now
from billfold.idempotency import service as idempotency
from billfold.idempotency.models import IdempotencyKey
from billfold.jobs import maintenance
from billfold.jobs import service as jobs
from billfold.jobs.models import Job
from billfold.jobs.service import ClaimedJob
from billfold.ratelimit import RateLimitCounter
from billfold.services import Services
from tests.helpers import Api


def _job(services: Services, job_id: int) -> Job:
    with services.database.read() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _enqueue(services: Services, kind: str, **kwargs: object) -> int:
    with services.database.transaction() as session:
        assert jobs.enqueue(session, kind=kind, **kwargs)  # type: ignore[arg-type]
        return int(session.scalars(select(Job.id).order_by(Job.id.desc()).limit(1)).one())


def test_failed_job_is_retried_with_backoff_then_buried(services: Services) -> None:
    kind = f"test.flaky.{uuid.uuid4().hex[:6]}"
    calls: list[int] = []

    def flaky(_services: Services, job: ClaimedJob) -> None:
        calls.append(job.attempts)
        raise RuntimeError("receiver down")

    worker = Worker(services)
    worker.handlers[kind] = flaky
    job_id = _enqueue(services, kind, max_attempts=3)
    worker.drain()
    job = _job(services, job_id)
    assert (job.status, job.attempts) == ("queued", 1)
    assert "receiver down" in (job.last_error or "")
    assert timedelta(seconds=9) < job.run_at - now() <= timedelta(seconds=10)
    worker.drain()  # not due yet: nothing runs
    assert calls == [1]
    for _ in range(2):
        worker.drain(at=now() + timedelta(days=1))
    job = _job(services, job_id)
    assert calls == [1, 2, 3]
    assert (job.status, job.attempts) == ("dead", 3)
    assert job.finished_at is not None


def test_lost_lease_is_claimed_again(services: Services) -> None:
    kind = f"test.lease.{uuid.uuid4().hex[:6]}"
    done: list[int] = []
    worker = Worker(services)
    worker.handlers[kind] = lambda _s, job: done.append(job.id)
    job_id = _enqueue(services, kind)
    with services.database.transaction() as session:
        claimed = jobs.claim(session, worker_id="dead-worker", limit=1000)
    assert job_id in [c.id for c in claimed]
    worker.drain()
    assert job_id not in done  # still leased to the dead worker
    worker.drain(at=now() + jobs.LEASE + timedelta(seconds=1))
    assert job_id in done
    job = _job(services, job_id)
    assert (job.status, job.attempts) == ("succeeded", 2)
    # The dead worker wakes up: it cannot mark a job it no longer holds.
    with services.database.transaction() as session:
        late = ClaimedJob(job_id, kind, None, {}, 1, 8)
        assert jobs.succeed(session, late, worker_id="dead-worker") is False


def test_dedupe_key_allows_one_active_job(services: Services) -> None:
    key = f"dedupe:{uuid.uuid4()}"
    kind = f"test.dedupe.{uuid.uuid4().hex[:6]}"
    with services.database.transaction() as session:
        assert jobs.enqueue(session, kind=kind, dedupe_key=key) is True
        assert jobs.enqueue(session, kind=kind, dedupe_key=key) is False
    worker = Worker(services)
    worker.handlers[kind] = lambda _s, _j: None
    worker.drain()
    with services.database.transaction() as session:  # finished: the key is free again
        assert jobs.enqueue(session, kind=kind, dedupe_key=key) is True


def test_many_workers_run_each_job_once(services: Services, backend: str) -> None:
    kind = f"test.many.{uuid.uuid4().hex[:6]}"
    runs: Counter[int] = Counter()
    lock = threading.Lock()

    def handler(_services: Services, job: ClaimedJob) -> None:
        with lock:
            runs[job.id] += 1

    with services.database.transaction() as session:
        for _ in range(120):
            jobs.enqueue(session, kind=kind)
        ids = set(session.scalars(select(Job.id).where(Job.kind == kind)))
    workers = [Worker(services) for _ in range(4)]
    for worker in workers:
        worker.handlers[kind] = handler

    def work(worker: Worker) -> None:
        for _ in range(200):
            if not worker.run_once(limit=5):
                break

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert set(runs) == ids
    assert set(runs.values()) == {1}
    with services.database.read() as session:
        statuses = set(session.scalars(select(Job.status).where(Job.kind == kind)))
    assert statuses == {"succeeded"}


def test_the_purge_works_in_chunks_until_nothing_expired_is_left(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "PURGE_CHUNK", 2)
    agent = api.new_agent()
    keys = [f"chunk-{n}" for n in range(5)]
    for key in [*keys, "kept"]:
        agent.fund(10, key=key)
    scope = f"account:{agent.account_id}"
    stale = f"test:purge:{uuid.uuid4().hex[:8]}"
    with services.database.transaction() as session:
        for n, key in enumerate(keys):  # long expired, the oldest keys there are
            session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
                .values(expires_at=now() - timedelta(days=30, seconds=n))
            )
    with services.database.transaction() as session:  # one chunk: the two oldest
        assert idempotency.purge_expired(session, limit=2) == 2
        left = set(session.scalars(select(IdempotencyKey.key).where(IdempotencyKey.scope == scope)))
        assert left == {"chunk-0", "chunk-1", "chunk-2", "kept"}
    with services.database.transaction() as session:
        for hours in (25, 26, 27):  # counters older than their retention
            session.add(
                RateLimitCounter(key=stale, window_start=now() - timedelta(hours=hours), count=1)
            )
        session.add(RateLimitCounter(key=stale, window_start=now(), count=1))
    maintenance.run_purge(services, ClaimedJob(0, maintenance.JOB_KIND, None, {}, 1, 8))
    with services.database.read() as session:
        left = set(session.scalars(select(IdempotencyKey.key).where(IdempotencyKey.scope == scope)))
        counters = session.scalars(
            select(RateLimitCounter.window_start).where(RateLimitCounter.key == stale)
        ).all()
    assert left == {"kept"}
    assert len(counters) == 1


def test_unknown_job_kind_is_buried_not_lost(services: Services) -> None:
    job_id = _enqueue(services, f"test.unknown.{uuid.uuid4().hex[:6]}", max_attempts=1)
    Worker(services).drain()
    job = _job(services, job_id)
    assert job.status == "dead"
    assert "no handler" in (job.last_error or "")


def test_maintenance_purges_expired_idempotency_keys(api: Api, services: Services) -> None:
    agent = api.new_agent()
    agent.fund(10, key="old-key")
    agent.fund(10, key="fresh-key")
    scope = f"account:{agent.account_id}"
    with services.database.transaction() as session:
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.scope == scope, IdempotencyKey.key == "old-key")
            .values(expires_at=now() - timedelta(seconds=1))
        )
        maintenance.schedule(session)
        maintenance.schedule(session)  # idempotent: one queued purge
        queued = session.scalars(
            select(Job.id).where(Job.kind == maintenance.JOB_KIND, Job.status == "queued")
        ).all()
    assert len(queued) == 1
    Worker(services).drain(at=now() + maintenance.INTERVAL + timedelta(seconds=1))
    with services.database.read() as session:
        keys = set(session.scalars(select(IdempotencyKey.key).where(IdempotencyKey.scope == scope)))
    assert keys == {"fresh-key"}
