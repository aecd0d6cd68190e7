"""usage holds: funds reserved for usage, captured or released later

Revision ID: 0010_usage_holds
Revises: 0009_stripe
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_usage_holds"
down_revision: str | None = "0009_stripe"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_holds",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("captured_micros", sa.BigInteger(), nullable=False),
        sa.Column("subscription_micros", sa.BigInteger(), nullable=False),
        sa.Column("promotional_micros", sa.BigInteger(), nullable=False),
        sa.Column("purchased_micros", sa.BigInteger(), nullable=False),
        sa.Column("usecase", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hold_transaction_id", sa.String(length=40), nullable=False),
        sa.Column("release_transaction_id", sa.String(length=40), nullable=True),
        sa.Column("charge_transaction_id", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_usage_holds_account_id_accounts"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_usage_holds"),
    )
    with op.batch_alter_table("usage_holds", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_holds_account_status", ["account_id", "status"], unique=False
        )
        batch_op.create_index(
            "ix_usage_holds_status_expires_at", ["status", "expires_at"], unique=False
        )


def downgrade() -> None:
    op.drop_table("usage_holds")
