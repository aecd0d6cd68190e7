"""test clocks: per-account sandbox clocks (Stripe's model) instead of one global offset

Revision ID: 0007_test_clocks
Revises: 0006_job_lanes
Create Date: 2026-12-10

A database whose global clock had been advanced keeps its history on that time: its
offset becomes a clock named "Global test clock (before 0007)", every existing account
moves onto it, and queued jobs of those accounts become that clock's jobs. Queued jobs
of no account (housekeeping) and webhook deliveries move back to real time. A database
whose clock never moved gets no clock: its accounts simply live on real time.
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0007_test_clocks"
down_revision: str | None = "0006_job_lanes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEGACY_CLOCK_ID = "clock_global_before_0007"


def upgrade() -> None:
    bind = op.get_bind()
    old = sa.table("test_clock", sa.column("id", sa.Integer), sa.column("offset_micros"))
    offset_micros = bind.execute(sa.select(old.c.offset_micros).where(old.c.id == 1)).scalar()
    op.drop_table("test_clock")
    clocks = op.create_table(
        "test_clocks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("offset_micros", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_test_clocks")),
    )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("test_clock_id", sa.String(length=40), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_accounts_test_clock_id"), ["test_clock_id"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_accounts_test_clock_id_test_clocks"),
            "test_clocks",
            ["test_clock_id"],
            ["id"],
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("test_clock_id", sa.String(length=40), nullable=True))
        batch_op.create_index(
            "ix_jobs_clock_due", ["test_clock_id", "status", "run_at"], unique=False
        )
    if offset_micros:
        _keep_the_global_clock(bind, clocks, offset_micros)


def _keep_the_global_clock(bind: sa.Connection, clocks: sa.Table, offset_micros: int) -> None:
    now = datetime.now(UTC)
    op.bulk_insert(
        clocks,
        [
            {
                "id": LEGACY_CLOCK_ID,
                "name": "Global test clock (before 0007)",
                "offset_micros": offset_micros,
                "created_at": now,
                "updated_at": now,
            }
        ],
    )
    accounts = sa.table("accounts", sa.column("test_clock_id"))
    bind.execute(sa.update(accounts).values(test_clock_id=LEGACY_CLOCK_ID))
    jobs = sa.table(
        "jobs",
        sa.column("id"),
        sa.column("account_id"),
        sa.column("lane"),
        sa.column("status"),
        sa.column("run_at", sa.DateTime(timezone=True)),
        sa.column("test_clock_id"),
    )
    queued = jobs.c.status.in_(["queued", "running"])
    bind.execute(
        sa.update(jobs)
        .where(queued, jobs.c.account_id.is_not(None), jobs.c.lane != "webhooks")
        .values(test_clock_id=LEGACY_CLOCK_ID)
    )
    offset = timedelta(microseconds=offset_micros)
    real_time = bind.execute(
        sa.select(jobs.c.id, jobs.c.run_at).where(queued, jobs.c.test_clock_id.is_(None))
    ).all()
    for job_id, run_at in real_time:
        if run_at.tzinfo is None:
            run_at = run_at.replace(tzinfo=UTC)
        bind.execute(sa.update(jobs).where(jobs.c.id == job_id).values(run_at=run_at - offset))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_clock_due")
        batch_op.drop_column("test_clock_id")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_accounts_test_clock_id_test_clocks"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_accounts_test_clock_id"))
        batch_op.drop_column("test_clock_id")
    op.drop_table("test_clocks")
    op.create_table(
        "test_clock",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("offset_micros", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_test_clock")),
    )
