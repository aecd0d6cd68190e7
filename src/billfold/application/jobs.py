"""The worker: claims due jobs and runs their handlers, as many processes as you like.

Each lane has its own pool of threads (`BILLFOLD_JOB_THREADS` for money work,
`BILLFOLD_WEBHOOK_DELIVERY_THREADS` for deliveries) and its own claim loop, so a slow
webhook receiver cannot delay a top-up, a renewal or a dunning retry.

A worker runs real-time jobs on real time. A worker made for one sandbox test clock
(`test_clock_id`) runs only that clock's jobs, on the clock's time that its caller set
(`billfold.clock.on_test_clock`): the clock's advance does so at each step
(`billfold.application.testclock`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from functools import partial

from billfold import clock
from billfold.checkout.service import EXPIRE_JOB, run_expiry
from billfold.coupons import service as coupons
from billfold.db import unavailable
from billfold.ids import new_id
from billfold.jobs import maintenance
from billfold.jobs import service as jobs
from billfold.jobs.models import Lane
from billfold.jobs.service import ClaimedJob
from billfold.payments import janitor as payment_janitor
from billfold.services import Services
from billfold.subscriptions import attempts, credits, dunning, engine, outcomes, renewal, start
from billfold.wallet import holds
from billfold.wallet.auto_funding import JOB_KIND as TOP_UP_JOB
from billfold.wallet.auto_funding import run_top_up
from billfold.webhooks import service as webhooks

log = logging.getLogger("billfold.worker")

MAX_BACKOFF_SECONDS = 5.0  # the longest wait between claims while the database is out

Handler = Callable[[Services, ClaimedJob], None]


def handlers() -> dict[str, Handler]:
    """Every job kind and the domain function that runs it."""
    return {
        TOP_UP_JOB: run_top_up,
        EXPIRE_JOB: run_expiry,
        holds.EXPIRE_JOB: holds.run_expiry,
        holds.SWEEP_JOB: holds.run_sweep,
        maintenance.JOB_KIND: maintenance.run_purge,
        payment_janitor.JANITOR_JOB: payment_janitor.run_janitor,
        payment_janitor.LEGACY_RECOVERY_JOB: payment_janitor.run_legacy_recovery,
        coupons.RELEASE_JOB: coupons.run_release,
        webhooks.JOB_KIND: webhooks.run_delivery,
        engine.RENEW_JOB: renewal.run_renewal,
        dunning.RETRY_JOB: outcomes.run_retry,
        outcomes.PAY_AGAIN_JOB: outcomes.run_pay_again,
        attempts.SETTLE_JOB: outcomes.run_settle,
        start.EXPIRE_INCOMPLETE_JOB: start.run_expire_incomplete,
        credits.JOB_KIND: credits.run_expiry,
    }


# Job kinds whose claimed jobs are first handed over together: the call does what can be
# done for all of them at once and leaves each job's rest to run as any job runs.
BatchHandler = Callable[[Services, list[ClaimedJob]], dict[int, Callable[[], object]]]


# How many due jobs of a batch kind a serving worker takes at once, run in turn by one of
# its threads (25 renewals take about a second with the sandbox), and how long it may
# take before the jobs not started yet go back to the queue (their leases last 5 min).
BATCH = 25
BATCH_BUDGET = 60.0


def batch_handlers() -> dict[str, BatchHandler]:
    return {
        engine.RENEW_JOB: renewal.prepare_renewals,
        credits.JOB_KIND: credits.prepare_expiries,
    }


class Worker:
    def __init__(
        self,
        services: Services,
        *,
        worker_id: str | None = None,
        test_clock_id: str | None = None,
    ) -> None:
        self.services = services
        self.worker_id = worker_id or f"{worker_prefix(os.getpid())}{new_id('w', 8)}"
        self.test_clock_id = test_clock_id
        self.handlers = handlers()
        self.batch_handlers = batch_handlers()
        self._next_schedule = 0.0
        self._next_hold_check = 0.0

    def run_once(
        self, *, limit: int = 20, at: datetime | None = None, lane: Lane | None = None
    ) -> int:
        """Claim and run one batch of due jobs (of one lane, or all), one after another;
        the number of jobs run."""
        claimed = self._claim(limit=limit, at=at, lane=lane)
        prepared: dict[int, Callable[[], object]] = {}
        handed: set[str] = set()  # the kinds handed to their batch handler
        done: list[ClaimedJob] = []  # their jobs, marked done together at the end
        for job in claimed:
            if job.kind in self.batch_handlers and job.kind not in handed:
                handed.add(job.kind)
                group = [other for other in claimed if other.kind == job.kind]
                prepared.update(self._prepare(job.kind, group))
            self._run(job, prepared.get(job.id), done if job.kind in handed else None)
        self._mark_done(done)
        return len(claimed)

    def _prepare(self, kind: str, group: list[ClaimedJob]) -> dict[int, Callable[[], object]]:
        """Hand jobs of one kind to its batch handler together; what is left of each
        (nothing if the handler failed: then each job runs alone)."""
        try:
            with _time_of(group[0]):  # a worker claims one clock's jobs, or real time's
                return self.batch_handlers[kind](self.services, group)
        except Exception:
            log.exception("%d %s jobs failed together; each runs alone", len(group), kind)
            return {}

    def _run_batch(self, kind: str, group: list[ClaimedJob]) -> None:
        """A batch kind's jobs, one after another; those whose turn comes after
        BATCH_BUDGET go back to the queue, long before their leases run out."""
        started = time.monotonic()
        prepared = self._prepare(kind, group)
        done: list[ClaimedJob] = []
        try:
            for n, job in enumerate(group):
                if time.monotonic() - started > BATCH_BUDGET:
                    try:
                        with self.services.database.transaction() as session:
                            jobs.hand_back(session, group[n:], worker_id=self.worker_id)
                    except Exception:  # their leases run out instead
                        log.exception("could not hand %d %s jobs back", len(group) - n, kind)
                    return
                self._run_logged(job, prepared.get(job.id), done)
        finally:
            try:
                self._mark_done(done)
            except Exception:  # they run again when their leases run out (each is safe to)
                log.exception("could not mark %d %s jobs done", len(done), kind)

    def _mark_done(self, done: list[ClaimedJob]) -> None:
        """Mark the jobs of a batch that succeeded done, in one transaction."""
        if not done:
            return
        with self.services.database.transaction() as session:
            marked = jobs.succeed_many(session, done, worker_id=self.worker_id)
        for job in done:
            if job.id not in marked:
                log.warning("job %s finished after its lease was taken over", job.id)

    def _claim(
        self,
        *,
        limit: int,
        at: datetime | None = None,
        lane: Lane | None = None,
        kind: str | None = None,
    ) -> list[ClaimedJob]:
        if self.test_clock_id is not None:
            assert clock.current_test_clock() == self.test_clock_id, "run me on my clock"
        with self.services.database.transaction() as session:
            return jobs.claim(
                session,
                worker_id=self.worker_id,
                limit=limit,
                lane=lane,
                at=at,
                test_clock_id=self.test_clock_id,
                kind=kind,
            )

    def drain(self, *, at: datetime | None = None, max_batches: int = 100) -> int:
        """Run due jobs until none is left (tests and the CLI's one-shot mode), the sweep
        of expired holds included (on real time)."""
        if self.test_clock_id is None:
            with self.services.database.transaction() as session:
                holds.schedule_sweep(session)
        total = 0
        for _ in range(max_batches):
            ran = self.run_once(at=at)
            total += ran
            if not ran:
                break
        return total

    def _run(
        self,
        job: ClaimedJob,
        rest: Callable[[], object] | None = None,
        done: list[ClaimedJob] | None = None,
    ) -> None:
        """Run the job (or `rest`, what its batch handler left of it) and record how it
        went, on the job's time; a success is added to `done`, if given, for the caller
        to mark with its batch's others."""
        with _time_of(job):
            self._run_on_its_time(job, rest, done)

    def _run_on_its_time(
        self, job: ClaimedJob, rest: Callable[[], object] | None, done: list[ClaimedJob] | None
    ) -> None:
        handler = self.handlers.get(job.kind)
        started = time.monotonic()
        fields = {
            "job_id": job.id,
            "job_kind": job.kind,
            "attempt": job.attempts,
            "account_id": job.account_id,
        }
        try:
            if rest is not None:
                rest()
            elif handler is None:
                raise LookupError(f"no handler for job kind {job.kind!r}")
            else:
                handler(self.services, job)
        except Exception as exc:
            log.exception(
                "job %s (%s) failed on attempt %s",
                job.id,
                job.kind,
                job.attempts,
                extra={**fields, "outcome": "failed", "duration_ms": _ms_since(started)},
            )
            with self.services.database.transaction() as session:
                jobs.fail(session, job, worker_id=self.worker_id, error=repr(exc))
            return
        if done is not None:
            done.append(job)
        else:
            with self.services.database.transaction() as session:
                if not jobs.succeed(session, job, worker_id=self.worker_id):
                    log.warning("job %s finished after its lease was taken over", job.id)
        log.info(
            "job %s (%s) done",
            job.id,
            job.kind,
            extra={**fields, "outcome": "succeeded", "duration_ms": _ms_since(started)},
        )

    def run_forever(self, stop: threading.Event, *, poll_seconds: float = 0.5) -> None:
        """Serve every lane until `stop` is set, then finish the jobs in hand."""
        settings = self.services.settings
        log.info("worker %s started", self.worker_id)
        deliveries = threading.Thread(
            target=self.serve_lane,
            args=(Lane.WEBHOOKS, settings.webhook_delivery_threads, stop),
            kwargs={"poll_seconds": poll_seconds},
            daemon=True,
            name="worker-webhooks",
        )
        deliveries.start()
        self.serve_lane(
            Lane.DEFAULT,
            settings.job_threads,
            stop,
            poll_seconds=poll_seconds,
            before_claim=self._housekeeping,
        )
        deliveries.join()
        log.info("worker %s stopped", self.worker_id)

    def serve_lane(
        self,
        lane: Lane,
        threads: int,
        stop: threading.Event,
        *,
        poll_seconds: float = 0.5,
        before_claim: Callable[[], None] | None = None,
    ) -> None:
        """Keep up to `threads` jobs of `lane` running, claiming more as threads free up.

        While claiming fails (the database out of reach), it waits longer after each
        failure (up to MAX_BACKOFF_SECONDS) and logs the first failure only; it resumes by
        itself once a claim succeeds."""
        failures = 0
        with ThreadPoolExecutor(threads, thread_name_prefix=f"worker-{lane}") as pool:
            running: set[Future[None]] = set()
            while not stop.is_set():
                claimed: list[ClaimedJob] = []
                try:
                    if before_claim is not None:
                        before_claim()
                    if len(running) < threads:
                        claimed = self._claim(limit=threads - len(running), lane=lane)
                except Exception as exc:
                    failures += 1
                    if failures == 1 and unavailable(exc):
                        log.warning("worker %s lane: database unavailable, backing off", lane)
                    elif failures == 1:
                        log.exception("worker loop error (%s lane)", lane)
                    stop.wait(min(MAX_BACKOFF_SECONDS, poll_seconds * 2 ** min(failures, 8)))
                    continue
                if failures:
                    log.info("worker %s lane resumed after %d failed claims", lane, failures)
                    failures = 0
                running.update(self._submit(pool, claimed, lane))
                if claimed and len(running) < threads:
                    continue  # more may be due already
                if running:
                    _, running = wait(running, timeout=poll_seconds, return_when=FIRST_COMPLETED)
                else:
                    stop.wait(poll_seconds)

    def _submit(
        self, pool: ThreadPoolExecutor, claimed: list[ClaimedJob], lane: Lane
    ) -> list[Future[None]]:
        return [pool.submit(task) for task in self._tasks(claimed, lane)]

    def _tasks(self, claimed: list[ClaimedJob], lane: Lane) -> Iterator[Callable[[], None]]:
        """A task per claimed job, but one per kind with a batch handler, which takes up
        to BATCH due jobs of its kind (claimed now) and runs them in turn. The single
        jobs' tasks come first, before the claims of the batches' others (a submitter
        starts them meanwhile)."""
        for job in claimed:
            if job.kind not in self.batch_handlers:
                yield partial(self._run_logged, job)
        for kind in self.batch_handlers:
            group = [job for job in claimed if job.kind == kind]
            if group and len(group) < BATCH:
                try:
                    group += self._claim(limit=BATCH - len(group), lane=lane, kind=kind)
                except Exception:  # the next claim finds out what failed
                    log.warning("could not claim more %s jobs to run together", kind)
            if group:
                yield partial(self._run_batch, kind, group)

    def run_once_as_served(self, *, lane: Lane = Lane.DEFAULT) -> bool:
        """Claim a due job of `lane` as a serving thread does when it frees up (a batch
        kind's topped up to BATCH of its kind) and run its task in this thread; whether
        there was one. Benchmarks drive the serving path with it."""
        claimed = self._claim(limit=1, lane=lane)
        for task in self._tasks(claimed, lane):
            task()
        return bool(claimed)

    def _run_logged(
        self,
        job: ClaimedJob,
        rest: Callable[[], object] | None = None,
        done: list[ClaimedJob] | None = None,
    ) -> None:
        try:
            self._run(job, rest, done)
        except Exception:  # recording the outcome failed: the lease will run out
            log.exception("job %s (%s): its outcome could not be recorded", job.id, job.kind)

    def _housekeeping(self) -> None:
        if time.monotonic() >= self._next_hold_check:
            with self.services.database.transaction() as session:
                holds.schedule_sweep(session)
            self._next_hold_check = time.monotonic() + holds.SWEEP_CHECK_SECONDS
        if time.monotonic() >= self._next_schedule:
            with self.services.database.transaction() as session:
                maintenance.schedule(session)
                payment_janitor.schedule_sweep(session)
            self._next_schedule = time.monotonic() + 60


def _time_of(job: ClaimedJob) -> AbstractContextManager[object]:
    """Real time for a real-time job; a test clock's job runs on the clock's time, which
    the worker's caller set."""
    return clock.real_time() if job.test_clock_id is None else nullcontext()


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


def worker_prefix(pid: int) -> str:
    """How the ids of the workers of process `pid` (on this host) begin."""
    return f"{socket.gethostname()}:{pid}:"


def release_leases_of(services: Services, pid: int) -> int:
    """Hand back the running jobs of a worker process of this host that was killed (see
    `jobs.release_leases`); how many."""
    with services.database.transaction() as session:
        released = jobs.release_leases(session, worker_prefix=worker_prefix(pid))
    if released:
        log.warning("handed back %d job(s) of killed worker process [%d]", released, pid)
    return released


def start_in_thread(services: Services) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    worker = Worker(services)
    thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True, name="worker")
    thread.start()
    return thread, stop
