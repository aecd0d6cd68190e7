"""Benchmark of subscription renewals: the job queue renewing many subscriptions at once.

Creates N accounts on one test clock, each with a saved sandbox card and a monthly
subscription (with included credits), in a fresh PostgreSQL database, runs (untimed)
what the starts left due in their first two days (each start's check for an unpaid
start, 23 hours on: not renewal work), then looks 32 days ahead on the clock without
running anything, and times W worker threads draining the renewal jobs (each renewal:
roll the period and finalize its invoice, charge the card through the sandbox processor,
record payment + ledger + credit grant + next job). The expiry of the old credits runs
in the same drain. As a baseline it runs pgbench's tpcb-like script on the same server
with W clients for the same time, and prints renewals/s, pgbench tps and their ratio as
a Markdown table row. It then checks that every subscription was charged exactly once.

    .venv/bin/python bench/renewals.py [--subscriptions 400] [--workers 1,4] [--processes 1]
    .venv/bin/python bench/renewals.py --cpu [--subscriptions 300]
    .venv/bin/python bench/renewals.py --calls [--subscriptions 300]

With `--cpu`, one worker thread drains in this process while the CPU is counted: this
process's (Python), every PostgreSQL process's, and the SQL statements sent, each per
renewal (the other jobs of the drain included). No pgbench.

With `--calls`, one worker drains in this thread under cProfile, which counts the
Python function calls per renewal (and the statements): figures that do not drift with
the VM's speed, to compare two versions of the code by; its times are not reported (the
profiler slows everything down).

With `--processes P`, P worker processes each run W threads (as P `billfold worker`
processes would; they coordinate only through the database), and pgbench runs P x W
clients.

The databases it creates (billfold_bench_renewals, billfold_pgbench) are dropped at the
end. This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import pstats
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select, text

sys.path.insert(0, str(Path(__file__).parent))

from billfold import clock
from billfold.accounts import service as accounts
from billfold.application.container import build_services
from billfold.application.jobs import Worker
from billfold.config import Settings
from billfold.migrate import upgrade
from billfold.payments.models import Payment
from billfold.services import Services
from billfold.subscriptions import plans
from billfold.subscriptions import start as subscriptions
from billfold.subscriptions.models import Subscription
from billfold.testclock import service as testclock
from usage_charges import (
    PG_ADMIN_DSN,
    PGBENCH_DB,
    _all_processes,
    drop_database,
    log,
    pgbench_init,
    pgbench_run,
    recreate_database,
)

BENCH_DB = "billfold_bench_renewals"


def provision(services: Services, count: int) -> clock.ClockTime:
    """The subscriptions, on a new test clock; the clock."""
    with services.database.transaction() as session:
        time = testclock.time_of(testclock.create(session, name="Bench renewals"))
    with clock.on_test_clock(time.test_clock_id, time.offset):
        _provision(services, count, time.test_clock_id)
    drain(services, 1, clock.ClockTime(time.test_clock_id, time.offset + timedelta(days=2)))
    with services.database.engine.connect() as connection:
        # A running database's tables are analyzed (autovacuum): without this the
        # planner would still take the jobs table for the few rows it had at its
        # creation.
        connection.execute(text("ANALYZE"))
        connection.commit()
    return time


def _provision(services: Services, count: int, test_clock_id: str) -> None:
    with services.database.transaction() as session:
        plan = plans.create_plan(
            session,
            name="Bench monthly",
            price_micros=20_000_000,
            currency="USD",
            period="month",
            features=[],
            kind="normal",
            included_credits_micros=5_000_000,
            trial_days=None,
        )
        plan_id = plan.id
    for n in range(count):
        with services.database.transaction() as session:
            account = accounts.create_account(
                session,
                email=f"bench-{n}@example.com",
                password="bench-password",
                test_clock_id=test_clock_id,
            )
            account_id = account.id
        card = services.processor.tokenize_card(
            number="4242424242424242", exp_month="12", exp_year="2045", cvc="123"
        )
        subscriptions.start(
            services, account_id=account_id, plan_id=plan_id, payment_method_id=card["id"]
        )


def drain_processes(url: str, processes: int, workers: int, at: clock.ClockTime) -> float:
    """P processes of W worker threads each, started together; the seconds until all are
    done. Each process makes its own engine, as a `billfold worker` process does."""
    context = multiprocessing.get_context("fork")
    ready = context.Barrier(processes + 1)
    children = [
        context.Process(target=_drain_child, args=(url, workers, at, ready))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    ready.wait()
    started = time.perf_counter()
    for child in children:
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"a worker process exited with {child.exitcode}")
    return time.perf_counter() - started


def _drain_child(url: str, workers: int, at: clock.ClockTime, ready: Any) -> None:
    services = build_services(Settings(database_url=url, admin_key="bench"), "bench")
    try:
        with services.database.read() as session:  # connect before the start
            session.execute(select(1))
        drain(services, workers, at, ready=ready)
    finally:
        services.database.dispose()


def drain(services: Services, workers: int, at: clock.ClockTime, ready: Any = None) -> float:
    """W worker threads run the clock's due jobs on its time `at`, each claiming as a
    serving worker's thread does (a batch kind's jobs up to BATCH of its kind at once;
    starting when `ready`, a barrier shared with other processes, lets them)."""
    barrier = threading.Barrier(workers + 1)

    def run(n: int) -> None:
        with clock.on_test_clock(at.test_clock_id, at.offset):
            barrier.wait()
            worker = Worker(services, worker_id=f"bench-{n}", test_clock_id=at.test_clock_id)
            while worker.run_once_as_served():
                pass

    threads = [threading.Thread(target=run, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    if ready is not None:
        ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def check(services: Services, count: int) -> None:
    with services.database.read() as session:
        cycle = session.scalar(
            select(func.count())
            .select_from(Payment)
            .where(Payment.purpose == "subscription_cycle", Payment.status == "succeeded")
        )
        renewed = session.scalar(
            select(func.count())
            .select_from(Subscription)
            .where(Subscription.cycle_number == 1, Subscription.status == "active")
        )
    if cycle != count or renewed != count:
        raise SystemExit(f"expected {count} renewals charged once, got {cycle} / {renewed}")


def fresh_database() -> tuple[str, Services]:
    """The bench's database, made anew and migrated: its URL, and services on it."""
    recreate_database(BENCH_DB)
    url = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{url}/{BENCH_DB}"
    upgrade(url)
    services = build_services(Settings(database_url=url, admin_key="bench"), "bench")
    return url, services


def bench(count: int, workers: int, processes: int = 1) -> tuple[float, float]:
    url, services = fresh_database()
    try:
        log(f"provisioning {count} subscriptions")
        time = provision(services, count)
        later = clock.ClockTime(time.test_clock_id, time.offset + timedelta(days=32))
        log(f"draining with {processes} process(es) of {workers} worker thread(s)")
        if processes == 1:
            seconds = drain(services, workers, later)
        else:
            services.database.dispose()  # the children make their own
            seconds = drain_processes(url, processes, workers, later)
        check(services, count)
    finally:
        services.database.dispose()
    rate = count / seconds
    log(f"{count} renewals in {seconds:.2f} s: {rate:.1f}/s")
    baseline = pgbench_run(processes * workers, max(5, round(seconds))).tps
    return rate, baseline


def cpu_per_renewal(count: int) -> str:
    """One worker thread's drain, as CPU and statements per renewal (a table row)."""
    measured: dict[str, float] = {}

    def run(services: Services, later: clock.ClockTime) -> None:
        postgres_before, python_before = _postgres_cpu(), time.process_time()
        measured["seconds"] = drain(services, 1, later)
        measured["python"] = time.process_time() - python_before
        measured["postgres"] = _postgres_cpu() - postgres_before

    statements = _one_worker(count, run)
    return (
        f"| {count / measured['seconds']:.1f} | {measured['python'] / count * 1000:.1f} ms | "
        f"{measured['postgres'] / count * 1000:.1f} ms | {statements / count:.1f} |"
    )


def calls_per_renewal(count: int) -> str:
    """One worker's drain in this thread under cProfile, as Python function calls and
    statements per renewal (a table row): counts that do not drift with the machine's
    speed, as its CPU times do on a shared VM."""
    profile = cProfile.Profile()

    def run(services: Services, later: clock.ClockTime) -> None:
        with clock.on_test_clock(later.test_clock_id, later.offset):
            worker = Worker(services, worker_id="bench-calls", test_clock_id=later.test_clock_id)
            profile.enable()
            while worker.run_once_as_served():
                pass
            profile.disable()

    statements = _one_worker(count, run)
    calls = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
    return f"| {calls / count:,.0f} | {statements / count:.1f} |"


def _one_worker(count: int, run: Any) -> int:
    """Provision `count` subscriptions in a fresh database and `run(services, time)` the
    drain at the renewals' time; the statements it sent."""
    _, services = fresh_database()
    statements = 0

    def count_statement(*_: Any) -> None:
        nonlocal statements
        statements += 1

    try:
        log(f"provisioning {count} subscriptions")
        time_ = provision(services, count)
        later = clock.ClockTime(time_.test_clock_id, time_.offset + timedelta(days=32))
        event.listen(services.database.engine, "before_cursor_execute", count_statement)
        run(services, later)
        check(services, count)
    finally:
        services.database.dispose()
    return statements


def _postgres_cpu() -> float:
    return sum(cpu for name, cpu in _all_processes().values() if name == "postgres")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscriptions", type=int, default=400)
    parser.add_argument("--workers", default="1,4", help="worker threads per process")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="CPU per renewal, one thread")
    parser.add_argument(
        "--calls", action="store_true", help="Python calls per renewal (cProfile), one thread"
    )
    args = parser.parse_args()
    one_thread = {
        "calls": (calls_per_renewal, "| Python calls a renewal | Statements a renewal |"),
        "cpu": (
            cpu_per_renewal,
            "| Renewals/s (one thread) | Python CPU | PostgreSQL CPU | Statements |",
        ),
    }
    for mode, (measure, header) in one_thread.items():
        if getattr(args, mode):
            try:
                row = measure(args.subscriptions)
            finally:
                drop_database(BENCH_DB)
            print(header)
            print("|" + "--:|" * header.count(" |"))
            print(row)
            return 0
    pgbench_init()
    rows = []
    try:
        for workers in [int(w) for w in args.workers.split(",")]:
            rate, tps = bench(args.subscriptions, workers, args.processes)
            rows.append((workers, rate, tps))
    finally:
        drop_database(BENCH_DB)
        drop_database(PGBENCH_DB)
    print("| Processes x threads | Renewals/s | pgbench tpcb-like tps | Ratio |")
    print("|---|---|---|---|")
    for workers, rate, tps in rows:
        print(f"| {args.processes} x {workers} | {rate:.1f} | {tps:.0f} | {rate / tps:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
