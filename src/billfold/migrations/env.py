"""Alembic environment: runs against the URL `billfold.migrate` hands it."""

from alembic import context
from sqlalchemy import create_engine, text

from billfold.models import Base

config = context.config
target_metadata = Base.metadata

# Any constant works; it only keeps concurrent `billfold migrate` runs in single file.
_MIGRATION_LOCK = 4_242_001


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "billfold.migrate sets sqlalchemy.url"
    engine = create_engine(url)
    with engine.connect() as connection:
        is_postgres = connection.dialect.name == "postgresql"
        if is_postgres:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
            connection.commit()
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if is_postgres:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
                connection.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `billfold migrate`")
run_migrations_online()
