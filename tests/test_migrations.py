"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, MetaData, create_engine, inspect, text
from sqlalchemy import types as sa_types

from billfold.clock import as_utc
from billfold.migrate import MIGRATIONS, upgrade
from billfold.models import Base
from tests.conftest import PG_ADMIN_DSN, LiveServer, postgres_reachable, require_service


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


# --- every earlier revision, with rows present ---------------------------------------------


def _revision_of(path: Path) -> str:
    found = re.search(r'^revision: str = "([^"]+)"', path.read_text(), re.MULTILINE)
    assert found, path
    return found.group(1)


REVISIONS = [_revision_of(p) for p in sorted((MIGRATIONS / "versions").glob("0*.py"))]


def _value(column: Column[Any], row: int) -> Any:
    """A value of the column's type that every constraint of the schema accepts (numbers
    0: the CHECKs ask for >= 0 and refunded <= amount)."""
    kind = column.type
    if isinstance(kind, sa_types.Boolean):
        return False
    if isinstance(kind, sa_types.Integer | sa_types.Numeric):
        return 0
    if isinstance(kind, sa_types.DateTime):
        return datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    if isinstance(kind, sa_types.Date):
        return datetime(2026, 1, 2).date()
    if isinstance(kind, sa_types.JSON):
        return {}
    if isinstance(kind, sa_types.LargeBinary):
        return b"x"
    length = getattr(kind, "length", None) or 40
    return f"{column.name[:8]}_{row}"[:length]


def _fill(url: str) -> dict[str, int]:
    """Two rows in every table of the schema as it stands (foreign keys pointing at the
    rows made before); how many rows each table holds."""
    engine = create_engine(url)
    metadata = MetaData()
    try:
        metadata.reflect(engine)
        made: dict[str, list[dict[str, Any]]] = {}
        with engine.begin() as connection:
            for table in metadata.sorted_tables:
                if table.name == "alembic_version":
                    continue
                made[table.name] = []
                for row in range(2):
                    values: dict[str, Any] = {}
                    for column in table.columns:
                        if (column.primary_key and column.autoincrement is True) or (
                            column.primary_key
                            and isinstance(column.type, sa_types.Integer)
                            and len(table.primary_key.columns) == 1
                        ):
                            continue  # the database numbers it
                        if column.foreign_keys:
                            target = next(iter(column.foreign_keys)).column
                            parents = made.get(target.table.name)
                            if parents:
                                values[column.name] = parents[row % len(parents)][target.name]
                                continue
                            if column.nullable:
                                continue
                        values[column.name] = _value(column, row)
                    inserted = (
                        connection.execute(
                            table.insert().values(**values).returning(*table.columns)
                        )
                        .mappings()
                        .one()
                    )
                    made[table.name].append(dict(inserted))
        with engine.connect() as connection:
            return {
                name: connection.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()
                for name in made
            }
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'upgrade.db'}"
        return
    problem = postgres_reachable()
    if problem:
        require_service(problem)
    name = f"billfold_upgrade_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("revision", REVISIONS[:-1])
def test_an_upgrade_from_every_earlier_revision_keeps_its_rows(
    revision: str, empty_database: str
) -> None:
    """A database left at any earlier schema version, with rows in every table, upgrades
    to the latest one: the schema is the models' and no row is lost."""
    upgrade(empty_database, revision)
    before = _fill(empty_database)
    upgrade(empty_database)
    engine = create_engine(empty_database)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert context.get_current_revision() == REVISIONS[-1]
            assert compare_metadata(context, Base.metadata) == []
            inspector = inspect(connection)
            for name, count in before.items():
                if inspector.has_table(name):  # (a table a later revision replaced)
                    after = connection.execute(text(f'SELECT count(*) FROM "{name}"'))
                    assert after.scalar_one() >= count, name
    finally:
        engine.dispose()


def test_postings_that_cannot_take_their_new_key_stop_the_migration_before_it_changes_anything(
    empty_database: str,
) -> None:
    """0015 keys a posting by (transaction, ledger account): a transaction that posted
    twice to one ledger account stops it with a clear error, at 0014 and with no half-made
    table left (SQLite's schema changes are not transactional); merged, it migrates."""
    upgrade(empty_database, "0014_partial_hot_indexes")
    _fill(empty_database)
    engine = create_engine(empty_database)
    twice = (
        "INSERT INTO ledger_postings (transaction_id, account_id, ledger_account, amount_micros)"
        " SELECT transaction_id, account_id, ledger_account, amount_micros"
        " FROM ledger_postings WHERE id = (SELECT min(id) FROM ledger_postings)"
    )
    try:
        with engine.begin() as connection:
            connection.execute(text(twice))
        with pytest.raises(RuntimeError, match="post twice to one ledger account"):
            upgrade(empty_database)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            assert context.get_current_revision() == "0014_partial_hot_indexes"
            assert "id" in {c["name"] for c in inspect(connection).get_columns("ledger_postings")}
            assert not [t for t in inspect(connection).get_table_names() if "tmp" in t]
        with engine.begin() as connection:
            connection.execute(
                text("DELETE FROM ledger_postings WHERE id = (SELECT max(id) FROM ledger_postings)")
            )
        upgrade(empty_database)
        with engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_revision() == REVISIONS[-1]
            assert connection.execute(text("SELECT count(*) FROM ledger_postings")).scalar() == 2
    finally:
        engine.dispose()
