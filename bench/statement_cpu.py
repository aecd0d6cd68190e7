"""Python CPU of one statement sent through the ORM's Session: the ORM's insert or update of
an entity against a Core statement of its table, the same SQL (what `insert_or_ignore`
and the renewal path pay per statement).

Makes a fresh PostgreSQL database (billfold_bench_statements, dropped at the end), then,
alternating the two forms twice, sends N job inserts (`INSERT … ON CONFLICT DO NOTHING
RETURNING`, as `insert_or_ignore` writes them) and N conditional job updates, each in one
transaction, and prints the process CPU per statement as a Markdown table.

    .venv/bin/python bench/statement_cpu.py [--statements 2000]

This is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, insert, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

sys.path.insert(0, str(Path(__file__).parent))

from billfold.application.container import build_services
from billfold.clock import now
from billfold.config import Settings
from billfold.jobs.models import Job
from billfold.migrate import upgrade
from billfold.services import Services
from usage_charges import PG_ADMIN_DSN, drop_database, log, recreate_database

BENCH_DB = "billfold_bench_statements"
_JOBS = cast(Table, Job.__table__)
_ACTIVE = text("status IN ('queued', 'running')")


def _job(n: int, tag: str) -> dict[str, Any]:
    return {
        "kind": "bench",
        "payload": {"n": n},
        "status": "queued",
        "run_at": now(),
        "attempts": 0,
        "max_attempts": 8,
        "lane": "default",
        "created_at": now(),
        "dedupe_key": f"{tag}-{n}",
    }


def _statements() -> dict[str, Any]:
    return {
        "orm insert": pg_insert(Job)
        .on_conflict_do_nothing(index_elements=["dedupe_key"], index_where=_ACTIVE)
        .returning(Job.id),
        "core insert": pg_insert(_JOBS)
        .on_conflict_do_nothing(index_elements=["dedupe_key"], index_where=_ACTIVE)
        .returning(_JOBS.c.id),
    }


def _cpu_per_insert(services: Services, statement: Any, count: int, tag: str) -> float:
    with services.database.transaction() as session:
        started = time.process_time()
        for n in range(count):
            session.execute(statement, _job(n, tag)).first()
        return (time.process_time() - started) / count


def _cpu_per_update(services: Services, form: str, ids: list[int]) -> float:
    with services.database.transaction() as session:
        started = time.process_time()
        for job_id in ids:
            if form == "orm update":
                statement: Any = update(Job).where(Job.id == job_id, Job.status.in_(["queued"]))
            else:
                statement = update(_JOBS).where(_JOBS.c.id == job_id, _JOBS.c.status == "queued")
            session.execute(statement.values(last_error=None))
        return (time.process_time() - started) / len(ids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--statements", type=int, default=2000)
    args = parser.parse_args()
    recreate_database(BENCH_DB)
    url = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{url}/{BENCH_DB}"
    upgrade(url)
    services = build_services(Settings(database_url=url, admin_key="bench"), "bench")
    rows: list[tuple[str, float]] = []
    try:
        with services.database.transaction() as session:
            session.execute(insert(_JOBS), [_job(n, "seed") for n in range(args.statements)])
            ids = [int(i) for i in session.scalars(text("SELECT id FROM jobs ORDER BY id"))]
        statements = _statements()
        for round_ in range(2):
            for form, statement in statements.items():
                log(f"{form}, round {round_ + 1}")
                tag = f"{form.split()[0]}{round_}"
                rows.append((form, _cpu_per_insert(services, statement, args.statements, tag)))
            for form in ("orm update", "core update"):
                log(f"{form}, round {round_ + 1}")
                rows.append((form, _cpu_per_update(services, form, ids)))
    finally:
        services.database.dispose()
        drop_database(BENCH_DB)
    print("| Statement | Python CPU a statement |")
    print("|---|--:|")
    for form, seconds in rows:
        print(f"| {form} | {seconds * 1e6:.0f} µs |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
