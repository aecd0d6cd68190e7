"""stripe: hosted checkout sessions, processor events, disputes

Revision ID: 0009_stripe
Revises: 0008_payment_attempts
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_stripe"
down_revision: str | None = "0008_payment_attempts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkout_sessions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("processor_checkout_id", sa.String(length=255), nullable=True)
        )
        batch_op.add_column(
            sa.Column("processor_checkout_url", sa.String(length=2000), nullable=True)
        )
        batch_op.create_unique_constraint(
            "uq_checkout_sessions_processor_checkout_id", ["processor_checkout_id"]
        )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("disputed", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )
    op.create_table(
        "disputes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("disputes", schema=None) as batch_op:
        batch_op.create_index("ix_disputes_account_id", ["account_id"], unique=False)
    op.create_table(
        "processor_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=80), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("processor_events")
    with op.batch_alter_table("disputes", schema=None) as batch_op:
        batch_op.drop_index("ix_disputes_account_id")
    op.drop_table("disputes")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("disputed")
    with op.batch_alter_table("checkout_sessions", schema=None) as batch_op:
        batch_op.drop_constraint("uq_checkout_sessions_processor_checkout_id", type_="unique")
        batch_op.drop_column("processor_checkout_url")
        batch_op.drop_column("processor_checkout_id")
