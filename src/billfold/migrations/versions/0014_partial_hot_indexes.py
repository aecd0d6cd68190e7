"""partial indexes on the hot path: a ledger reference's uniqueness only where one is set,
the holds' indexes only over the held ones

A usage charge (most of the ledger) has no reference, and a resolved hold is never read
by account or expiry again: neither writes an entry in an index it is never found
through. The unique index keeps the name of the constraint it replaces.

Revision ID: 0014_partial_hot_indexes
Revises: 0013_hold_expired_credit
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_partial_hot_indexes"
down_revision: str | None = "0013_hold_expired_credit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_REFERENCE = "uq_ledger_transactions_account_id_reference"
_SET = "reference IS NOT NULL"
_HELD = "status = 'held'"


def upgrade() -> None:
    with op.batch_alter_table("ledger_transactions") as batch:
        batch.drop_constraint(_REFERENCE, type_="unique")
    op.create_index(
        _REFERENCE,
        "ledger_transactions",
        ["account_id", "reference"],
        unique=True,
        sqlite_where=sa.text(_SET),
        postgresql_where=sa.text(_SET),
    )
    op.drop_index("ix_usage_holds_account_status", table_name="usage_holds")
    op.drop_index("ix_usage_holds_status_expires_at", table_name="usage_holds")
    for name, column in [
        ("ix_usage_holds_held_account", "account_id"),
        ("ix_usage_holds_held_expires_at", "expires_at"),
    ]:
        op.create_index(
            name,
            "usage_holds",
            [column],
            sqlite_where=sa.text(_HELD),
            postgresql_where=sa.text(_HELD),
        )


def downgrade() -> None:
    op.drop_index("ix_usage_holds_held_expires_at", table_name="usage_holds")
    op.drop_index("ix_usage_holds_held_account", table_name="usage_holds")
    op.create_index("ix_usage_holds_status_expires_at", "usage_holds", ["status", "expires_at"])
    op.create_index("ix_usage_holds_account_status", "usage_holds", ["account_id", "status"])
    op.drop_index(_REFERENCE, table_name="ledger_transactions")
    with op.batch_alter_table("ledger_transactions") as batch:
        batch.create_unique_constraint(_REFERENCE, ["account_id", "reference"])
