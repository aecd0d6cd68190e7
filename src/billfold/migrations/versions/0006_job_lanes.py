"""job lanes: webhook deliveries apart from money work, a per-endpoint running limit

Revision ID: 0006_job_lanes
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_job_lanes"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lane", sa.String(length=20), server_default="default", nullable=False)
        )
        batch_op.add_column(sa.Column("concurrency_key", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("slot", sa.Integer(), nullable=True))
    # Deliveries already queued move to their lane; they carry no concurrency key, so
    # they run once more without the per-endpoint limit (the retries they queue have it).
    op.execute("UPDATE jobs SET lane = 'webhooks' WHERE kind = 'webhooks.deliver'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_lane_due", ["lane", "status", "run_at"], unique=False)
        batch_op.create_index(
            "uq_jobs_running_slot",
            ["concurrency_key", "slot"],
            unique=True,
            sqlite_where=sa.text("status = 'running'"),
            postgresql_where=sa.text("status = 'running'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("uq_jobs_running_slot")
        batch_op.drop_index("ix_jobs_lane_due")
        batch_op.drop_column("slot")
        batch_op.drop_column("concurrency_key")
        batch_op.drop_column("lane")
