"""Post balanced transactions and read balances: the whole ledger.

Sign convention: a posting's amount is added to its ledger account's balance. Wallet
accounts (`wallet:<bucket>`) hold what the platform owes the account holder and never
go below zero; the others (`processor:clearing`, `revenue:usage`, `operator:adjustments`,
`holds:usage`) are their counterparts and carry the mirror image. Every transaction's
postings sum to zero, so the sum over all ledger accounts of an account is always zero.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    String,
    Table,
    Update,
    bindparam,
    case,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session

from billfold.clock import now
from billfold.db import lock_rows
from billfold.errors import ErrorCode, InsufficientFunds, NotFound
from billfold.ids import new_id
from billfold.ledger.models import BUCKETS, LedgerPosting, LedgerTransaction, Wallet

WALLET_PREFIX = "wallet:"
PROCESSOR_CLEARING = "processor:clearing"
REVENUE_USAGE = "revenue:usage"
OPERATOR_ADJUSTMENTS = "operator:adjustments"
# Promotional credit the operator gives through coupons (credits and purchase bonuses).
OPERATOR_PROMOTIONS = "operator:promotions"
# Wallet money reserved by usage holds until they are captured or released: off the
# wallet (no "wallet:" prefix), so the cached balances stay what the account can spend.
HOLDS_USAGE = "holds:usage"
# Included credit granted by subscriptions and not yet expired (the grants' side).
SUBSCRIPTION_GRANTS = "subscription:grants"

# Hot-path statements go to the Tables: the ORM's bulk-statement machinery adds much
# Python overhead per statement and nothing these need.
_WALLETS = cast(Table, Wallet.__table__)
_TRANSACTIONS = cast(Table, LedgerTransaction.__table__)
_POSTINGS = cast(Table, LedgerPosting.__table__)
_INSERT_TRANSACTION = insert(_TRANSACTIONS)
_INSERT_POSTINGS = insert(_POSTINGS)
_BUCKET_COLUMNS = {bucket: _WALLETS.c[f"{bucket}_micros"] for bucket in BUCKETS}


def wallet_account(bucket: str) -> str:
    assert bucket in BUCKETS, bucket
    return WALLET_PREFIX + bucket


@dataclass(frozen=True)
class Posting:
    ledger_account: str
    amount_micros: int


@cache
def _wallet_update(shape: tuple[tuple[str, bool], ...], credit: bool) -> Update:
    """The wallet's UPDATE for a post that moves the buckets of `shape` (each with
    whether it lowers it), built once per shape, its values bound: building a statement
    costs more Python than running it. Every bucket it lowers must stay at or above zero
    (no row: InsufficientFunds); a credit that lifts the balance back to the
    auto-funding threshold re-arms it."""
    wallet = _WALLETS.c
    net = bindparam("b_net", type_=BigInteger)
    values: dict[Any, Any] = {
        wallet.balance_micros: wallet.balance_micros + net,
        wallet.updated_at: bindparam("b_updated_at", type_=wallet.updated_at.type),
    }
    # String, not the column's type: a foreign key's is its target's, unknown until the
    # accounts model is imported, and the cached statement would keep it so.
    guards = [wallet.account_id == bindparam("b_account_id", type_=String)]
    for bucket, lowered in shape:
        column = _BUCKET_COLUMNS[bucket]
        delta = bindparam(f"b_{bucket}", type_=BigInteger)
        values[column] = column + delta
        if lowered:
            guards.append(column + delta >= 0)
    if credit:
        values[wallet.auto_funding_armed] = case(
            (
                wallet.balance_micros + net >= func.coalesce(wallet.charge_threshold_micros, 0),
                true(),
            ),
            else_=wallet.auto_funding_armed,
        )
    return update(_WALLETS).where(*guards).values(values).returning(wallet.balance_micros)


def post(
    session: Session,
    *,
    account_id: str,
    kind: str,
    usecase: str,
    postings: Sequence[Posting],
    description: str | None = None,
    payment_id: str | None = None,
    reference: str | None = None,
    meta: dict[str, Any] | None = None,
) -> LedgerTransaction:
    """Write one balanced transaction and move the cached wallet balances with it.

    The wallet row changes through one atomic conditional UPDATE: every bucket it
    lowers must stay at or above zero, or nothing is written and InsufficientFunds
    is raised (the caller's transaction then rolls back as a whole).
    """
    deltas = _wallet_deltas(postings)
    net = sum(deltas.values())

    shape = tuple((bucket, delta < 0) for bucket, delta in sorted(deltas.items()))
    parameters = {f"b_{bucket}": delta for bucket, delta in deltas.items()}
    balance_after = session.execute(
        _wallet_update(shape, net > 0),
        {"b_account_id": account_id, "b_net": net, "b_updated_at": now(), **parameters},
    ).scalar_one_or_none()
    if balance_after is None:
        raise InsufficientFunds("The wallet balance cannot cover this amount.")

    entry = Entry(account_id, kind, usecase, postings, description, payment_id, reference, meta)
    values = _transaction_values(entry, net, balance_after)
    # Core inserts, in order: the ORM would not know postings depend on their transaction.
    session.execute(_INSERT_TRANSACTION, _transaction_row(values))
    session.execute(_INSERT_POSTINGS, _posting_rows(values["id"], entry))
    transaction = LedgerTransaction(**values)
    return transaction


def post_entry(session: Session, entry: Entry) -> LedgerTransaction:
    """`post` of an `Entry`."""
    return post(
        session,
        account_id=entry.account_id,
        kind=entry.kind,
        usecase=entry.usecase,
        postings=entry.postings,
        description=entry.description,
        payment_id=entry.payment_id,
        reference=entry.reference,
        meta=entry.meta,
    )


def _wallet_deltas(postings: Sequence[Posting]) -> dict[str, int]:
    """What balanced, non-zero postings on distinct ledger accounts move in each wallet
    bucket (AssertionError for any other postings)."""
    if sum(p.amount_micros for p in postings) != 0:
        raise AssertionError(f"unbalanced postings: {postings}")
    if any(p.amount_micros == 0 for p in postings):
        raise AssertionError(f"zero posting: {postings}")
    if len({p.ledger_account for p in postings}) != len(postings):
        raise AssertionError(f"two postings on one ledger account: {postings}")
    deltas: dict[str, int] = defaultdict(int)
    for p in postings:
        if p.ledger_account.startswith(WALLET_PREFIX):
            deltas[p.ledger_account.removeprefix(WALLET_PREFIX)] += p.amount_micros
    return deltas


def _transaction_values(entry: Entry, net: int, balance_after: int) -> dict[str, Any]:
    return {
        "id": new_id("txn"),
        "account_id": entry.account_id,
        "kind": entry.kind,
        "type": "credit" if net >= 0 else "debit",
        "amount_micros": abs(net),
        "balance_after_micros": balance_after,
        "usecase": entry.usecase,
        "description": entry.description,
        "payment_id": entry.payment_id,
        "reference": entry.reference,
        "meta": entry.meta,
        "status": "succeeded",
        "created_at": now(),
    }


def _transaction_row(values: dict[str, Any]) -> dict[str, Any]:
    """A transaction's values as its table's columns."""
    return {("metadata" if key == "meta" else key): value for key, value in values.items()}


def _posting_rows(transaction_id: str, entry: Entry) -> list[dict[str, Any]]:
    return [
        {
            "transaction_id": transaction_id,
            "account_id": entry.account_id,
            "ledger_account": p.ledger_account,
            "amount_micros": p.amount_micros,
        }
        for p in entry.postings
    ]


@dataclass(frozen=True)
class Entry:
    """A transaction for `post_many` (`post`'s arguments)."""

    account_id: str
    kind: str
    usecase: str
    postings: Sequence[Posting]
    description: str | None = None
    payment_id: str | None = None
    reference: str | None = None
    meta: dict[str, Any] | None = None


@cache
def _many_update() -> Update:
    """One wallet's share of a `post_many`: the balance and every bucket moved by their
    bound sums, a bucket that would go below zero refusing the row (as `post`'s guard)."""
    wallet = _WALLETS.c
    values: dict[Any, Any] = {
        wallet.balance_micros: wallet.balance_micros + bindparam("b_net", type_=BigInteger),
        wallet.updated_at: bindparam("b_updated_at", type_=wallet.updated_at.type),
    }
    guards = [wallet.account_id == bindparam("b_account_id", type_=String)]
    for bucket, column in _BUCKET_COLUMNS.items():
        delta = bindparam(f"b_{bucket}", type_=BigInteger)
        values[column] = column + delta
        guards.append(column + delta >= 0)
    return update(_WALLETS).where(*guards).values(values)


def post_many(session: Session, entries: Sequence[Entry]) -> list[str]:
    """`post` for many transactions at once, writing what posting them one after another
    in this order writes. The wallets are locked and read by one SELECT in account order
    (the database's order, as `lock_wallets` and the usage path lock them). A bucket that
    any of the transactions, in turn, would take below zero raises InsufficientFunds
    before anything is written (as `post` would; the caller's transaction then rolls
    back). Then each wallet moves once (one executemany UPDATE), a credit that lifts a
    balance to its auto-funding threshold re-arms it, and every transaction and every
    posting is written by one multi-row INSERT each, each transaction with the balance
    after it. The ids of the transactions, in order."""
    if not entries:
        return []
    deltas = [_wallet_deltas(entry.postings) for entry in entries]
    wallet = _WALLETS.c
    running: dict[str, dict[str, int]] = {}  # each wallet's buckets, posting by posting
    before: dict[str, dict[str, int]] = {}
    thresholds: dict[str, int] = {}
    unarmed: set[str] = set()
    for row in session.execute(
        select(
            wallet.account_id,
            wallet.charge_threshold_micros,
            wallet.auto_funding_armed,
            *_BUCKET_COLUMNS.values(),
        )
        .where(wallet.account_id.in_({entry.account_id for entry in entries}))
        .order_by(wallet.account_id)
        .with_for_update()
    ):
        account_id = row[0]
        before[account_id] = dict(zip(BUCKETS, row[3:], strict=True))
        running[account_id] = dict(before[account_id])
        thresholds[account_id] = row[1] or 0
        if not row[2]:
            unarmed.add(account_id)
    rearm: set[str] = set()
    transactions: list[dict[str, Any]] = []
    postings: list[dict[str, Any]] = []
    for entry, entry_deltas in zip(entries, deltas, strict=True):
        buckets = running.get(entry.account_id)
        if buckets is None:
            raise InsufficientFunds("The wallet balance cannot cover this amount.")  # as `post`
        for bucket, delta in entry_deltas.items():
            buckets[bucket] += delta
            if buckets[bucket] < 0:
                raise InsufficientFunds("The wallet balance cannot cover this amount.")
        net = sum(entry_deltas.values())
        balance_after = sum(buckets.values())
        if net > 0 and balance_after >= thresholds[entry.account_id]:
            rearm.add(entry.account_id)
        values = _transaction_values(entry, net, balance_after)
        transactions.append(_transaction_row(values))
        postings.extend(_posting_rows(values["id"], entry))
    current = now()
    moved = session.execute(
        _many_update(),
        [
            {
                "b_account_id": account_id,
                "b_net": sum(buckets.values()) - sum(before[account_id].values()),
                "b_updated_at": current,
                **{f"b_{b}": buckets[b] - before[account_id][b] for b in BUCKETS},
            }
            for account_id, buckets in running.items()
        ],
    ).rowcount  # type: ignore[attr-defined]
    assert moved == len(running), "the wallets are locked: every UPDATE moves its row"
    if rearm & unarmed:
        session.execute(
            update(_WALLETS)
            .where(wallet.account_id.in_(sorted(rearm & unarmed)))
            .values(auto_funding_armed=True)
        )
    session.execute(_INSERT_TRANSACTION, transactions)
    session.execute(_INSERT_POSTINGS, postings)
    return [row["id"] for row in transactions]


def expire_included_credit(
    session: Session,
    *,
    account_id: str,
    amount_micros: int,
    description: str,
    reference: str,
    meta: dict[str, Any],
) -> LedgerTransaction:
    """Included (subscription) credit that expired: out of the wallet's subscription
    bucket, back to the grants' side (a grant's expiry, or a hold giving back credit
    that expired while it was held)."""
    entry = included_credit_expiry(
        account_id=account_id,
        amount_micros=amount_micros,
        description=description,
        reference=reference,
        meta=meta,
    )
    return post_entry(session, entry)


def included_credit_expiry(
    *, account_id: str, amount_micros: int, description: str, reference: str, meta: dict[str, Any]
) -> Entry:
    """`expire_included_credit`'s transaction, to post with others (`post_many`)."""
    return Entry(
        account_id=account_id,
        kind="subscription_credit_expiry",
        usecase="subscription_credits",
        description=description,
        reference=reference,
        postings=[
            Posting(wallet_account("subscription"), -amount_micros),
            Posting(SUBSCRIPTION_GRANTS, amount_micros),
        ],
        meta=meta,
    )


def record_failed_attempt(
    session: Session,
    *,
    account_id: str,
    kind: str,
    amount_micros: int,
    balance_micros: int,
    description: str,
    payment_id: str | None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Note an attempt that moved no money in the wallet's history (it has no postings)."""
    session.execute(
        insert(LedgerTransaction).values(
            id=new_id("txn"),
            account_id=account_id,
            kind=kind,
            type="credit",
            status="failed",
            amount_micros=amount_micros,
            balance_after_micros=balance_micros,
            usecase=kind,
            description=description,
            payment_id=payment_id,
            reference=f"failed:{payment_id}" if payment_id else None,
            meta=meta,
            created_at=now(),
        )
    )


def spend_split(buckets: dict[str, int], amount_micros: int) -> list[Posting]:
    """Wallet postings that take `amount_micros` in spending order (SPEC §5)."""
    remaining = amount_micros
    postings = []
    for bucket in BUCKETS:
        take = min(buckets[bucket], remaining)
        if take:
            postings.append(Posting(wallet_account(bucket), -take))
            remaining -= take
    if remaining:
        raise InsufficientFunds("The wallet balance cannot cover this amount.")
    return postings


def get_wallet(session: Session, account_id: str) -> Wallet:
    """The wallet row, read; 404 for an account that has none."""
    wallet = session.get(Wallet, account_id)
    if wallet is None:
        raise NotFound("No such account.", code=ErrorCode.ACCOUNT_NOT_FOUND)
    return wallet


def lock_wallet(session: Session, account_id: str) -> Wallet:
    """The wallet row, locked for the rest of the transaction (SQLite: already exclusive)."""
    wallet = session.scalars(
        select(Wallet)
        .where(Wallet.account_id == account_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if wallet is None:
        raise NotFound("No such account.", code=ErrorCode.ACCOUNT_NOT_FOUND)
    return wallet


def lock_wallets(session: Session, account_ids: list[str]) -> dict[str, Wallet]:
    """`lock_wallet` for several accounts in one statement, locked in account order (as
    every writer of several wallets locks them, so two never wait in a cycle), by account."""
    ids = set(account_ids)
    wallets = lock_rows(session, Wallet, Wallet.account_id, ids)
    if len(wallets) != len(ids):
        raise NotFound("No such account.", code=ErrorCode.ACCOUNT_NOT_FOUND)
    return wallets


def all_ledger_balances(session: Session) -> dict[str, dict[str, int]]:
    """`ledger_balances` of every account at once: account → ledger account → sum."""
    rows = session.execute(
        select(
            LedgerPosting.account_id,
            LedgerPosting.ledger_account,
            func.sum(LedgerPosting.amount_micros),
        ).group_by(LedgerPosting.account_id, LedgerPosting.ledger_account)
    ).all()
    found: dict[str, dict[str, int]] = {}
    for account_id, name, total in rows:
        found.setdefault(account_id, {})[name] = int(total)
    return found


def unbalanced_transactions(session: Session, limit: int = 100) -> list[str]:
    """Transactions whose postings do not sum to zero (there should be none)."""
    return list(
        session.scalars(
            select(LedgerPosting.transaction_id)
            .group_by(LedgerPosting.transaction_id)
            .having(func.sum(LedgerPosting.amount_micros) != 0)
            .limit(limit)
        )
    )


def wallet_consistent(cached: dict[str, int], sums: dict[str, int]) -> bool:
    """A wallet's cached buckets and balance agree with its postings, which sum to zero."""
    return (
        all(sums.get(wallet_account(b), 0) == cached[b] for b in BUCKETS)
        and cached["balance"] == sum(cached[b] for b in BUCKETS)
        and sum(sums.values()) == 0
    )


def ledger_balances(session: Session, account_id: str) -> dict[str, int]:
    """Sum of postings per ledger account of one account (the ledger's truth)."""
    rows = session.execute(
        select(LedgerPosting.ledger_account, func.sum(LedgerPosting.amount_micros))
        .where(LedgerPosting.account_id == account_id)
        .group_by(LedgerPosting.ledger_account)
    ).all()
    return {name: int(total) for name, total in rows}
