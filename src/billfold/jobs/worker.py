"""The worker: claims due jobs and runs their handlers, as many processes as you like."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from billfold.ids import new_id
from billfold.jobs import service as jobs
from billfold.jobs.service import ClaimedJob

if TYPE_CHECKING:
    from billfold.api.deps import Services

log = logging.getLogger("billfold.worker")

Handler = Callable[["Services", ClaimedJob], None]


def handlers() -> dict[str, Handler]:
    """Every job kind and the domain function that runs it."""
    from billfold.checkout.service import EXPIRE_JOB, run_expiry
    from billfold.coupons import service as coupons
    from billfold.jobs import maintenance
    from billfold.payments import recovery
    from billfold.subscriptions import attempts, credits, dunning
    from billfold.subscriptions import service as subscriptions
    from billfold.wallet.auto_funding import JOB_KIND as TOP_UP_JOB
    from billfold.wallet.auto_funding import run_top_up
    from billfold.webhooks import service as webhooks

    return {
        TOP_UP_JOB: run_top_up,
        EXPIRE_JOB: run_expiry,
        maintenance.JOB_KIND: maintenance.run_purge,
        recovery.JOB_KIND: recovery.run_recovery,
        coupons.RELEASE_JOB: coupons.run_release,
        webhooks.JOB_KIND: webhooks.run_delivery,
        subscriptions.RENEW_JOB: subscriptions.run_renewal,
        dunning.RETRY_JOB: subscriptions.run_retry,
        attempts.SETTLE_JOB: subscriptions.run_settle,
        subscriptions.EXPIRE_INCOMPLETE_JOB: subscriptions.run_expire_incomplete,
        credits.JOB_KIND: credits.run_expiry,
    }


class Worker:
    def __init__(self, services: Services, *, worker_id: str | None = None) -> None:
        self.services = services
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{new_id('w', 8)}"
        self.handlers = handlers()

    def run_once(self, *, limit: int = 20, at: datetime | None = None) -> int:
        """Claim and run one batch of due jobs; the number of jobs run."""
        with self.services.database.transaction() as session:
            claimed = jobs.claim(session, worker_id=self.worker_id, limit=limit, at=at)
        for job in claimed:
            self._run(job)
        return len(claimed)

    def drain(self, *, at: datetime | None = None, max_batches: int = 100) -> int:
        """Run due jobs until none is left (tests and the CLI's one-shot mode)."""
        total = 0
        for _ in range(max_batches):
            ran = self.run_once(at=at)
            total += ran
            if not ran:
                break
        return total

    def _run(self, job: ClaimedJob) -> None:
        handler = self.handlers.get(job.kind)
        try:
            if handler is None:
                raise LookupError(f"no handler for job kind {job.kind!r}")
            handler(self.services, job)
        except Exception as exc:
            log.exception("job %s (%s) failed on attempt %s", job.id, job.kind, job.attempts)
            with self.services.database.transaction() as session:
                jobs.fail(session, job, worker_id=self.worker_id, error=repr(exc))
            return
        with self.services.database.transaction() as session:
            if not jobs.succeed(session, job, worker_id=self.worker_id):
                log.warning("job %s finished after its lease was taken over", job.id)

    def run_forever(self, stop: threading.Event, *, poll_seconds: float = 0.5) -> None:
        from billfold.jobs import maintenance
        from billfold.testclock import service as testclock

        log.info("worker %s started", self.worker_id)
        next_schedule = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_schedule:
                    with self.services.database.transaction() as session:
                        maintenance.schedule(session)
                    next_schedule = time.monotonic() + 60
                if self.services.settings.processor == "sandbox":
                    testclock.sync(self.services.database)  # another process may advance it
                ran = self.run_once()
            except Exception:
                log.exception("worker loop error")
                ran = 0
            if not ran:
                stop.wait(poll_seconds)
        log.info("worker %s stopped", self.worker_id)


def start_in_thread(services: Services) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    worker = Worker(services)
    thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True, name="worker")
    thread.start()
    return thread, stop
