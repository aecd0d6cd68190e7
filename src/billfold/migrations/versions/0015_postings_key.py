"""ledger postings keyed by their transaction and ledger account, without a surrogate id

A transaction posts at most once to a ledger account, so (transaction_id, ledger_account)
is a posting's key; its index also serves the reads of a transaction's postings, which
had an index of their own. Every posting writes one index entry less, and no sequence.

Revision ID: 0015_postings_key
Revises: 0014_partial_hot_indexes
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015_postings_key"
down_revision: str | None = "0014_partial_hot_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = "pk_ledger_postings"
_BY_TRANSACTION = "ix_ledger_postings_transaction_id"


class TwoPostingsOnOneLedgerAccount(RuntimeError):
    """A transaction posted twice to one ledger account: the new key cannot hold it."""


def upgrade() -> None:
    # Checked before anything changes: SQLite's schema changes are not transactional, so a
    # copy failing half-way would leave its temporary table behind.
    twice = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT transaction_id, ledger_account FROM ledger_postings"
                " GROUP BY transaction_id, ledger_account HAVING count(*) > 1 LIMIT 5"
            )
        )
        .all()
    )
    if twice:
        raise TwoPostingsOnOneLedgerAccount(
            "These transactions post twice to one ledger account (transaction, ledger "
            f"account): {[tuple(row) for row in twice]}. Merge each pair into one posting "
            "of their sum, then migrate again; nothing was changed."
        )
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index(_BY_TRANSACTION, table_name="ledger_postings")
        op.drop_constraint(_KEY, "ledger_postings", type_="primary")
        op.drop_column("ledger_postings", "id")  # and its sequence
        op.create_primary_key(_KEY, "ledger_postings", ["transaction_id", "ledger_account"])
        return
    with op.batch_alter_table("ledger_postings", recreate="always") as batch:
        batch.drop_index(_BY_TRANSACTION)
        batch.drop_column("id")
        batch.create_primary_key(_KEY, ["transaction_id", "ledger_account"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(_KEY, "ledger_postings", type_="primary")
        op.add_column("ledger_postings", sa.Column("id", sa.BigInteger(), sa.Identity()))
        op.create_primary_key(_KEY, "ledger_postings", ["id"])
    else:  # SQLite numbers the copied rows itself (an INTEGER PRIMARY KEY is the rowid)
        with op.batch_alter_table("ledger_postings", recreate="always") as batch:
            batch.drop_constraint(_KEY, type_="primary")
            batch.add_column(sa.Column("id", sa.Integer(), primary_key=True))
    op.create_index(_BY_TRANSACTION, "ledger_postings", ["transaction_id"])
