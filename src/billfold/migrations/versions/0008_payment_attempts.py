"""payment attempts: one state machine for every card charge

Recovery jobs ("payments.recover_charge") and subscription settle jobs
("subscriptions.settle_attempt") already queued keep their handlers, which settle their
charges through the new attempts.

Revision ID: 0008_payment_attempts
Revises: 0007_test_clocks
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_payment_attempts"
down_revision: str | None = "0007_test_clocks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payment_attempts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("purpose", sa.String(length=30), nullable=False),
        sa.Column("operation", sa.String(length=400), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("payment_method_id", sa.String(length=64), nullable=False),
        sa.Column("payment_purpose", sa.String(length=40), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=True),
        sa.Column("failure_reason", sa.String(length=30), nullable=True),
        sa.Column("failure_message", sa.String(length=500), nullable=True),
        sa.Column("settled_by", sa.String(length=12), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_payment_attempts_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_attempts")),
        sa.UniqueConstraint("key", name=op.f("uq_payment_attempts_key")),
    )
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.create_index("ix_payment_attempts_account_id", ["account_id"], unique=False)
        batch_op.create_index(
            "ix_payment_attempts_operation", ["operation", "number"], unique=False
        )
        batch_op.create_index("ix_payment_attempts_open", ["state", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_attempts_open")
        batch_op.drop_index("ix_payment_attempts_operation")
        batch_op.drop_index("ix_payment_attempts_account_id")
    op.drop_table("payment_attempts")
