"""Benchmark of the hourly housekeeping purge: how fast expired Idempotency-Keys go.

Fills a fresh PostgreSQL database with N expired keys (and as many live ones, which must
stay), then times `maintenance.run_purge` as a worker runs it: chunks of PURGE_CHUNK rows,
one transaction each. Prints keys purged per second, and the same figure for
pgbench tpcb-like transactions per second (1 client) on the same server as a yardstick.

    .venv/bin/python bench/purge.py [--keys 1000000]

The databases it creates (billfold_bench_purge, billfold_pgbench) are dropped at the end.
This is a benchmark, not a test: it asserts nothing about speed, but it checks that every
expired key went and every live one stayed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from billfold.application.container import build_services
from billfold.config import Settings
from billfold.jobs import maintenance
from billfold.jobs.service import ClaimedJob
from billfold.migrate import upgrade
from usage_charges import (
    PG_ADMIN_DSN,
    PGBENCH_DB,
    drop_database,
    log,
    pgbench_init,
    pgbench_run,
    recreate_database,
)

BENCH_DB = "billfold_bench_purge"


def fill(dsn: str, keys: int) -> None:
    """`keys` expired keys and as many live ones, written by PostgreSQL itself."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for expired, offset in ((True, "- interval '1 hour'"), (False, "+ interval '1 day'")):
            conn.execute(
                "INSERT INTO idempotency_keys (scope, key, fingerprint, status, response_status,"
                " response_body, created_at, locked_at, expires_at)"
                " SELECT 'account:acct_bench', %s || n, md5(n::text), 'completed', 201,"
                " '{\"data\":{}}', now(), now(), now() "
                + offset
                + " FROM generate_series(1, %s) n",
                ("expired-" if expired else "live-", keys),
            )
        conn.execute("VACUUM ANALYZE idempotency_keys")


def count(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE expires_at <= now()), count(*) FROM idempotency_keys"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    dsn = f"{base}/{BENCH_DB}"
    recreate_database(BENCH_DB)
    pgbench_init()
    try:
        upgrade(dsn.replace("postgresql://", "postgresql+psycopg://"))
        log(f"writing {args.keys:,} expired and {args.keys:,} live keys")
        fill(dsn, args.keys)
        url = dsn.replace("postgresql://", "postgresql+psycopg://")
        services = build_services(Settings(database_url=url, admin_key="bench"), "bench")
        try:
            started = time.perf_counter()
            maintenance.run_purge(services, ClaimedJob(0, maintenance.JOB_KIND, None, {}, 1, 8))
            seconds = time.perf_counter() - started
        finally:
            services.database.dispose()
        expired, total = count(dsn)
        if expired or total != args.keys:
            raise SystemExit(f"left {expired} expired keys, {total} keys in all")
        rate = args.keys / seconds
        log(f"purged {args.keys:,} keys in {seconds:.1f} s")
        tps = pgbench_run(1, max(5, round(seconds))).tps
    finally:
        drop_database(BENCH_DB)
        drop_database(PGBENCH_DB)
    print("| Expired keys | Seconds | Keys purged/s | pgbench tpcb-like TPS (1 client) |")
    print("|--:|--:|--:|--:|")
    print(f"| {args.keys:,} | {seconds:.1f} | {rate:,.0f} | {tps:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
