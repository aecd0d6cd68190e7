"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from billfold.clock import as_utc
from billfold.migrate import upgrade
from billfold.models import Base
from tests.conftest import LiveServer


def test_migrated_schema_matches_models(live_server: LiveServer, database_url: str) -> None:
    upgrade(database_url)  # a second run is a no-op
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert context.get_current_revision() is not None
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_a_moved_global_clock_becomes_a_test_clock_its_accounts_live_on(
    tmp_path: Path,
) -> None:
    """0007_test_clocks keeps a sandbox database's history on the time it was lived on."""
    url = f"sqlite:///{tmp_path / 'before-0007.db'}"
    upgrade(url, "0006_job_lanes")
    engine = create_engine(url)
    offset = timedelta(days=40)
    due = datetime(2030, 1, 1, tzinfo=UTC)
    try:
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO test_clock (id, offset_micros, updated_at) VALUES (1, :o, :t)"),
                {"o": offset // timedelta(microseconds=1), "t": datetime.now(UTC)},
            )
            connection.execute(
                text(
                    "INSERT INTO accounts (id, email, password_hash, status, currency, "
                    "created_at) VALUES ('acct_old', 'old@example.com', 'x', 'active', "
                    "'USD', :t)"
                ),
                {"t": datetime.now(UTC)},
            )
            for account, lane in (("acct_old", "default"), (None, "default"), (None, "webhooks")):
                connection.execute(
                    text(
                        "INSERT INTO jobs (account_id, kind, lane, payload, status, run_at, "
                        "attempts, max_attempts, created_at) VALUES (:a, 'k', :l, '{}', "
                        "'queued', :r, 0, 8, :r)"
                    ),
                    {"a": account, "l": lane, "r": due.replace(tzinfo=None)},
                )
        upgrade(url)
        with engine.connect() as connection:
            [(clock_id, stored)] = connection.execute(
                text("SELECT id, offset_micros FROM test_clocks")
            ).all()
            assert stored == offset // timedelta(microseconds=1)
            assert connection.execute(text("SELECT test_clock_id FROM accounts")).all() == [
                (clock_id,)
            ]
            jobs = connection.execute(
                text("SELECT account_id, lane, test_clock_id, run_at FROM jobs ORDER BY id")
            ).all()
        on_clock, housekeeping, delivery = jobs
        assert on_clock[2] == clock_id  # on the clock, at its time as before
        assert as_utc(datetime.fromisoformat(str(on_clock[3]))) == due
        for job in (housekeeping, delivery):  # back on real time
            assert job[2] is None
            assert as_utc(datetime.fromisoformat(str(job[3]))) == due - offset
    finally:
        engine.dispose()
