"""A ledger reference (the business key that makes a posting happen once) is unique per
account where one is set; transactions without one (usage charges) are not constrained."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from billfold.accounts import service as accounts
from billfold.ledger import service as ledger
from billfold.ledger.models import LedgerTransaction
from billfold.services import Services
from tests.conftest import LiveServer


def _account(services: Services) -> str:
    with services.database.transaction() as session:
        return accounts.create_account(
            session, email=f"ref-{uuid.uuid4().hex}@example.com", password="reference-test"
        ).id


def _credit(services: Services, account_id: str, reference: str | None) -> None:
    with services.database.transaction() as session:
        ledger.post(
            session,
            account_id=account_id,
            kind="adjustment",
            usecase="test",
            postings=[
                ledger.Posting(ledger.wallet_account("purchased"), 1_000_000),
                ledger.Posting(ledger.OPERATOR_ADJUSTMENTS, -1_000_000),
            ],
            reference=reference,
        )


def _count(services: Services, account_id: str) -> int:
    with services.database.read() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(LedgerTransaction)
                .where(LedgerTransaction.account_id == account_id)
            )
            or 0
        )


def test_a_reference_posts_once_per_account_and_none_is_never_a_duplicate(
    live_server: LiveServer,
) -> None:
    services = live_server.services
    first, second = _account(services), _account(services)
    _credit(services, first, "once:1")
    with pytest.raises(IntegrityError):
        _credit(services, first, "once:1")  # the whole transaction rolls back
    _credit(services, second, "once:1")  # another account's reference is its own
    _credit(services, first, None)
    _credit(services, first, None)
    assert _count(services, first) == 3
    assert _count(services, second) == 1
    with services.database.read() as session:
        balances = ledger.ledger_balances(session, first)
    assert balances[ledger.wallet_account("purchased")] == 3_000_000
