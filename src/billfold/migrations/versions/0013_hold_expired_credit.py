"""usage holds: the included (subscription) credit a hold kept past its grant's expiry

Revision ID: 0013_hold_expired_credit
Revises: 0012_attempt_charge_started
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_hold_expired_credit"
down_revision: str | None = "0012_attempt_charge_started"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "usage_holds",
        sa.Column(
            "subscription_expired_micros",
            sa.BigInteger(),
            nullable=False,
            server_default=sa.text("0"),
        ),
    )


def downgrade() -> None:
    with op.batch_alter_table("usage_holds") as batch:
        batch.drop_column("subscription_expired_micros")
