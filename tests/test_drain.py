"""Graceful drain: SIGTERM to `billfold serve` under load lets the requests in flight
finish and loses or doubles no charge; a job worker that does not stop within the grace
period is killed and its running jobs are handed back at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import requests

from billfold import clock
from billfold.application.jobs import release_leases_of, worker_prefix
from billfold.cli.supervise import JobWorkers
from billfold.jobs import service as jobs
from billfold.services import Services
from tests.helpers import Api
from tests.test_serve import serving

AMOUNT = Decimal("0.01")


@dataclass
class Outcome:
    key: str
    started: float
    ended: float
    status: int | None  # None: no answer (the connection closed)


@dataclass
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _charge_until_refused(api: Api, account_id: str, load: Load, stop: threading.Event) -> None:
    session = requests.Session()
    headers = {"Authorization": f"Bearer {api.admin_key}"}
    refused_in_a_row = 0
    while not stop.is_set() and refused_in_a_row < 3:
        key = f"drain-{uuid.uuid4()}"
        started = time.monotonic()
        try:
            response = session.post(
                api.admin_url("/usage-charges"),
                json={"account_id": account_id, "amount": str(AMOUNT), "usecase": "drain"},
                headers={**headers, "Idempotency-Key": key},
                timeout=30,
            )
            status: int | None = response.status_code
            refused_in_a_row = 0
        except requests.ConnectionError:
            status = None
            refused_in_a_row += 1
            session = requests.Session()
            time.sleep(0.05)
        with load.lock:
            load.outcomes.append(Outcome(key, started, time.monotonic(), status))


def test_sigterm_under_load_finishes_requests_in_flight_and_loses_nothing(
    tmp_path: Path,
) -> None:
    load = Load()
    stop = threading.Event()
    with serving(tmp_path, "--no-worker") as served:
        api = served.api
        agent = api.new_agent()
        assert agent.fund(100).status_code == 200
        account_id = agent.account_id
        clients = [
            threading.Thread(target=_charge_until_refused, args=(api, account_id, load, stop))
            for _ in range(8)
        ]
        for client in clients:
            client.start()
        time.sleep(1.5)
        sigterm_at = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(timeout=40)
        stopped_at = time.monotonic()
        stop.set()
        for client in clients:
            client.join(30)
        assert served.process.returncode == 0, served.log.read_text()[-3000:]

    answered = [o for o in load.outcomes if o.status is not None]
    assert {o.status for o in answered} == {201}, {o.status for o in answered}
    # Requests in flight when SIGTERM came were answered, not cut off.
    straddling = [o for o in answered if o.started < sigterm_at < o.ended]
    assert straddling, "no request was in flight at SIGTERM"
    assert all(o.ended <= stopped_at + 0.5 for o in answered)

    # Started again on the same database: the requests without an answer, sent again
    # with their keys, are charged once (now, or replayed); the balance is exact.
    with serving(tmp_path, "--no-worker") as again:
        unanswered = [o for o in load.outcomes if o.status is None]
        for outcome in unanswered:
            retry = requests.post(
                again.api.admin_url("/usage-charges"),
                json={"account_id": account_id, "amount": str(AMOUNT), "usecase": "drain"},
                headers={
                    "Authorization": f"Bearer {again.api.admin_key}",
                    "Idempotency-Key": outcome.key,
                },
                timeout=30,
            )
            assert retry.status_code == 201, retry.text
        charged = len(answered) + len(unanswered)
        check = again.api.ledger_check(account_id)
    assert check["consistent"] is True
    assert Decimal(str(check["postings"]["revenue:usage"])) == AMOUNT * charged


def test_a_worker_that_outlives_the_grace_is_killed_and_its_jobs_handed_back(
    services: Services,
) -> None:
    # A job claimed by a worker of a process that will be killed.
    class Stubborn(JobWorkers):
        @staticmethod
        def _spawn() -> subprocess.Popen[bytes]:
            ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            return subprocess.Popen([sys.executable, "-c", ignore + "time.sleep(60)"])

    killed: list[int] = []
    workers = Stubborn(1, grace_seconds=0.5, on_killed=killed.append)
    workers.start()
    (pid,) = workers.pids
    time.sleep(0.3)  # it has set its SIGTERM handler
    # On a clock of its own (no such clock exists: nothing else runs its jobs), so the
    # claims below take this test's job only.
    own_clock = f"clk_drain_{uuid.uuid4().hex[:8]}"
    with clock.on_test_clock(own_clock, timedelta(0)):
        with services.database.transaction() as session:
            jobs.enqueue(session, kind="test.drain", payload={"n": 1})
        with services.database.transaction() as session:
            mine = jobs.claim(
                session, worker_id=f"{worker_prefix(pid)}w1", limit=10, test_clock_id=own_clock
            )
    assert len(mine) == 1

    workers.stop()
    assert killed == [pid]
    assert release_leases_of(services, pid) >= 1  # what serve's on_killed does
    with (
        clock.on_test_clock(own_clock, timedelta(0)),
        services.database.transaction() as session,
    ):
        retaken = jobs.claim(session, worker_id="host:other:w2", limit=10, test_clock_id=own_clock)
        assert len(retaken) == 1 and retaken[0].id == mine[0].id
        assert retaken[0].attempts == 2  # the killed attempt counts, as a crash's would
        jobs.succeed(session, retaken[0], worker_id="host:other:w2")
