"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

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
