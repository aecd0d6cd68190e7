"""`ledger.post_many` (many transactions in a few statements) writes what `ledger.post`
writes one transaction after another: the same wallets (balances, buckets, auto-funding
re-armed), the same transactions with the same balance after each, the same postings; and
refuses (InsufficientFunds) exactly where one of them, in turn, would be refused. Random
sequences over a few accounts, on both databases."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from billfold.accounts import service as accounts
from billfold.errors import InsufficientFunds
from billfold.ledger import service as ledger
from billfold.ledger.models import BUCKETS, LedgerPosting, LedgerTransaction, Wallet
from billfold.services import Services
from tests.conftest import LiveServer

# What a transaction may post: a bucket credited from its counterpart, a bucket spent or
# expired, or nothing moved in the wallet at all (a card payment's clearing to revenue, as
# a subscription's).
_SHAPES = {
    "purchased": [(ledger.wallet_account("purchased"), 1), (ledger.PROCESSOR_CLEARING, -1)],
    "subscription": [
        (ledger.wallet_account("subscription"), 1),
        (ledger.SUBSCRIPTION_GRANTS, -1),
    ],
    "both": [
        (ledger.wallet_account("purchased"), 1),
        (ledger.wallet_account("promotional"), 2),
        (ledger.OPERATOR_PROMOTIONS, -3),
    ],
    "off_wallet": [(ledger.PROCESSOR_CLEARING, -1), ("revenue:subscriptions", 1)],
    "spend": [(ledger.wallet_account("purchased"), -1), (ledger.REVENUE_USAGE, 1)],
    "expire": [
        (ledger.wallet_account("subscription"), -1),
        (ledger.SUBSCRIPTION_GRANTS, 1),
    ],
}

entries = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(sorted(_SHAPES)), st.integers(1, 5_000_000)),
    min_size=1,
    max_size=8,
)


def _accounts(services: Services, count: int) -> list[str]:
    """New accounts, the first with auto-funding disarmed below a threshold (a credit
    that reaches it re-arms it)."""
    with services.database.transaction() as session:
        made = [
            accounts.create_account(
                session, email=f"credits-{uuid.uuid4().hex}@example.com", password="post-credits"
            ).id
            for _ in range(count)
        ]
        session.execute(
            update(Wallet)
            .where(Wallet.account_id == made[0])
            .values(charge_threshold_micros=3_000_000, auto_funding_armed=False)
        )
    return made


def _entry(account_id: str, shape: str, amount: int, n: int) -> ledger.Entry:
    return ledger.Entry(
        account_id=account_id,
        kind="test_credit",
        usecase="test",
        postings=[ledger.Posting(name, share * amount) for name, share in _SHAPES[shape]],
        description=f"credit {n}",
        reference=f"credit:{n}",
        meta={"n": n},
    )


def _written(services: Services, account_ids: list[str]) -> list[Any]:
    with services.database.read() as session:
        wallets = [session.get(Wallet, account_id) for account_id in account_ids]
        transactions = session.scalars(
            select(LedgerTransaction)
            .where(LedgerTransaction.account_id.in_(account_ids))
            .order_by(LedgerTransaction.reference)
        ).all()
        postings = session.execute(
            select(
                LedgerPosting.transaction_id,
                LedgerPosting.ledger_account,
                LedgerPosting.amount_micros,
            ).where(LedgerPosting.account_id.in_(account_ids))
        ).all()
        slot = {account_id: n for n, account_id in enumerate(account_ids)}
        return [
            [
                (
                    w.balance_micros,
                    w.purchased_micros,
                    w.promotional_micros,
                    w.subscription_micros,
                    w.auto_funding_armed,
                )
                for w in wallets
                if w is not None
            ],
            [
                (
                    slot[t.account_id],
                    t.reference,
                    t.kind,
                    t.type,
                    t.amount_micros,
                    t.balance_after_micros,
                    t.description,
                    t.meta,
                    sorted((p.ledger_account, p.amount_micros) for p in postings if p[0] == t.id),
                )
                for t in transactions
            ],
        ]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chosen=entries)
def test_posting_many_together_writes_what_posting_them_one_by_one_writes(
    live_server: LiveServer, chosen: list[tuple[int, str, int]]
) -> None:
    services = live_server.services
    alone, together = _accounts(services, 3), _accounts(services, 3)
    refused = False
    try:
        with services.database.transaction() as session:
            for n, (who, shape, amount) in enumerate(chosen):
                ledger.post_entry(session, _entry(alone[who], shape, amount, n))
    except InsufficientFunds:
        refused = True
    many = [
        _entry(together[who], shape, amount, n) for n, (who, shape, amount) in enumerate(chosen)
    ]
    if refused:
        with pytest.raises(InsufficientFunds), services.database.transaction() as session:
            ledger.post_many(session, many)
        assert _written(services, together) == _written(services, alone)  # nothing, both
        return
    with services.database.transaction() as session:
        ids = ledger.post_many(session, many)
    assert len(set(ids)) == len(chosen)
    assert _written(services, together) == _written(services, alone)
    with services.database.read() as session:
        for account_id in together:
            wallet = session.get(Wallet, account_id)
            assert wallet is not None
            cached = {bucket: getattr(wallet, f"{bucket}_micros") for bucket in BUCKETS}
            cached["balance"] = wallet.balance_micros
            assert ledger.wallet_consistent(cached, ledger.ledger_balances(session, account_id))


def test_posting_many_refuses_a_wallet_that_does_not_exist(live_server: LiveServer) -> None:
    services = live_server.services
    [account_id] = _accounts(services, 1)
    with pytest.raises(InsufficientFunds), services.database.transaction() as session:
        ledger.post_many(
            session,
            [
                _entry(account_id, "purchased", 5, 0),
                _entry(f"acct_missing{uuid.uuid4().hex}", "purchased", 5, 1),
            ],
        )
    assert _written(services, [account_id])[1] == []  # rolled back as a whole
