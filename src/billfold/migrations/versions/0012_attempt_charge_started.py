"""payment attempts: when a charge under the attempt's key last began

Revision ID: 0012_attempt_charge_started
Revises: 0011_operator_keys
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_attempt_charge_started"
down_revision: str | None = "0011_operator_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "payment_attempts",
        sa.Column("charge_started_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table("payment_attempts") as batch:
        batch.drop_column("charge_started_at")
