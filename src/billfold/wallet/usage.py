"""Usage charges written many at a time: the platform's hot path.

`write` debits a list of charges in one transaction, each on its own: a charge its wallet
cannot cover (or whose account does not exist) is refused without failing the others.
Every wallet of the batch is locked once, in account order (so two batches never
deadlock), and updated once however many of the batch's charges it pays. Each charge is
a ledger transaction whose postings sum to zero, spent in the usual order (subscription,
promotional, purchased credit), and each charge sent with an idempotency key stores its
answer under that key in the same transaction. No ORM here: Core statements, few round
trips, the wallet lock held from the first statement to the commit.

A key already stored (a replay, a twin committed first, another payload) makes `write`
raise `KeysTaken`: the caller rolls back and sends those charges the careful way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import psycopg
import simplejson
from sqlalchemy import Table, bindparam, insert, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from billfold.clock import wall_now
from billfold.errors import (
    BillfoldError,
    ErrorCode,
    InsufficientFunds,
    NotFound,
    error_payload,
)
from billfold.idempotency import service as idempotency
from billfold.idempotency.models import IdempotencyKey
from billfold.ids import new_id
from billfold.jsonenc import render
from billfold.ledger import service as ledger
from billfold.ledger.models import BUCKETS, LedgerPosting, LedgerTransaction, Wallet
from billfold.money import from_micros
from billfold.wallet import auto_funding
from billfold.wallet.schemas import UsageChargeOut

log = logging.getLogger(__name__)

_WALLETS = cast(Table, Wallet.__table__)
_TRANSACTIONS = cast(Table, LedgerTransaction.__table__)
_POSTINGS = cast(Table, LedgerPosting.__table__)
_KEYS = cast(Table, IdempotencyKey.__table__)
_BUCKET_ACCOUNTS = {bucket: ledger.wallet_account(bucket) for bucket in BUCKETS}

KIND = "usage_charge"  # also written out in _WRITE_PG


@dataclass(frozen=True)
class Charge:
    """One usage charge as asked for. `created_at` is the caller's time (an account on a
    test clock charges at its clock's time); `key`: its idempotency key in `scope`."""

    account_id: str
    amount_micros: int
    usecase: str
    description: str | None
    metadata: dict[str, Any] | None
    created_at: datetime
    key: str | None = None
    scope: str = ""
    fingerprint: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class Answer:
    """What one charge answers: the HTTP status and the rendered envelope."""

    status_code: int
    body: bytes
    charge: UsageChargeOut | None = None
    error: BillfoldError | None = None


class KeysTaken(Exception):
    """Some charges' keys are already stored: roll back, then send those the careful way."""

    def __init__(self, taken: set[tuple[str, str]]) -> None:
        super().__init__(f"{len(taken)} idempotency key(s) already stored")
        self.taken = taken


class NotWritten(Exception):
    """The connection failed before the batch's writes were sent (a connection that died
    while idle, a database that restarted): nothing was written, so the batch may be sent
    again on a new connection."""


@dataclass
class _WalletState:
    account_id: str
    currency: str
    buckets: dict[str, int]
    taken: dict[str, int]
    auto_funding_enabled: bool
    armed: bool
    threshold: int | None
    debited: bool = False
    updated_at: datetime | None = None

    @property
    def balance(self) -> int:
        return sum(self.buckets.values())


def _lock(session: Session, account_ids: list[str]) -> dict[str, _WalletState]:
    w = _WALLETS.c
    rows = session.execute(
        select(
            w.account_id,
            w.currency,
            w.subscription_micros,
            w.promotional_micros,
            w.purchased_micros,
            w.auto_funding_enabled,
            w.auto_funding_armed,
            w.charge_threshold_micros,
        )
        .where(w.account_id.in_(account_ids))
        .order_by(w.account_id)
        .with_for_update()
    ).all()
    return _wallet_states(rows)


def _refusal(exc: BillfoldError, charge: Charge) -> Answer:
    return Answer(exc.status_code, render(error_payload(exc, charge.request_id)), error=exc)


@dataclass
class _Plan:
    """A batch worked out against its locked wallets: what to answer and what to write."""

    answers: list[Answer]
    transactions: list[dict[str, Any]]
    postings: list[dict[str, Any]]
    debited: list[_WalletState]
    low_balance: dict[str, tuple[int, int]]


def _plan(charges: Sequence[Charge], wallets: dict[str, _WalletState]) -> _Plan:
    """Each charge charged or refused on its own, in order, against `wallets` (changed in
    place): the answers, the ledger rows and the wallets' new state; writes nothing."""
    answers: list[Answer] = []
    transactions: list[dict[str, Any]] = []
    postings: list[dict[str, Any]] = []
    low_balance: dict[str, tuple[int, int]] = {}
    for charge in charges:
        wallet = wallets.get(charge.account_id)
        if wallet is None:
            answers.append(
                _refusal(NotFound("No such account.", code=ErrorCode.ACCOUNT_NOT_FOUND), charge)
            )
            continue
        if wallet.balance < charge.amount_micros:
            refused = InsufficientFunds(
                "The wallet balance cannot cover this charge.",
                details={
                    "balance": from_micros(wallet.balance),
                    "amount": from_micros(charge.amount_micros),
                },
            )
            answers.append(_refusal(refused, charge))
            continue
        txn_id = new_id("txn")
        remaining = charge.amount_micros
        for bucket in BUCKETS:
            take = min(wallet.buckets[bucket], remaining)
            if take:
                wallet.buckets[bucket] -= take
                wallet.taken[bucket] += take
                remaining -= take
                postings.append(
                    {
                        "transaction_id": txn_id,
                        "account_id": charge.account_id,
                        "ledger_account": _BUCKET_ACCOUNTS[bucket],
                        "amount_micros": -take,
                    }
                )
        postings.append(
            {
                "transaction_id": txn_id,
                "account_id": charge.account_id,
                "ledger_account": ledger.REVENUE_USAGE,
                "amount_micros": charge.amount_micros,
            }
        )
        wallet.debited = True
        wallet.updated_at = max(wallet.updated_at or charge.created_at, charge.created_at)
        balance_after = wallet.balance
        # Auto-funding: one top-up per crossing of the threshold (as auto_funding.after_debit).
        if (
            wallet.auto_funding_enabled
            and wallet.threshold is not None
            and balance_after < wallet.threshold
            and wallet.armed
        ):
            wallet.armed = False
            low_balance[wallet.account_id] = (balance_after, wallet.threshold)
        transactions.append(
            {
                "id": txn_id,
                "account_id": charge.account_id,
                "kind": KIND,
                "type": "debit",
                "amount_micros": charge.amount_micros,
                "status": "succeeded",
                "balance_after_micros": balance_after,
                "usecase": charge.usecase,
                "description": charge.description,
                "payment_id": None,
                "reference": None,
                "metadata": charge.metadata,
                "created_at": charge.created_at,
            }
        )
        out = UsageChargeOut(
            id=txn_id,
            account_id=charge.account_id,
            amount=from_micros(charge.amount_micros),
            usecase=charge.usecase,
            balance_after=from_micros(balance_after),
            created_at=charge.created_at,
        )
        answers.append(Answer(201, render({"data": out.model_dump()}), charge=out))
    debited = [wallet for wallet in wallets.values() if wallet.debited]
    return _Plan(answers, transactions, postings, debited, low_balance)


def _check_keys_unique(charges: Sequence[Charge]) -> None:
    keyed = [(c.scope, c.key) for c in charges if c.key is not None]
    if len(set(keyed)) != len(keyed):
        raise ValueError("a batch names an idempotency key twice")


def write(
    session: Session, charges: Sequence[Charge], policy: idempotency.KeyPolicy
) -> list[Answer]:
    """Debit `charges` in order, each charged or refused on its own; answers in order.

    Raises KeysTaken (before writing anything but the probe of the keys) when a key is
    already stored; the caller's transaction must then be rolled back.
    """
    _check_keys_unique(charges)
    wallets = _lock(session, sorted({c.account_id for c in charges}))
    plan = _plan(charges, wallets)
    _store_keys(session, _key_rows(charges, plan.answers, policy, wall_now()))
    if plan.transactions:
        session.execute(insert(_TRANSACTIONS), plan.transactions)
        session.execute(insert(_POSTINGS), plan.postings)
    _update_wallets(session, plan.debited)
    for account_id, (balance_after, threshold) in plan.low_balance.items():
        auto_funding.announce_low_balance(
            session,
            account_id=account_id,
            balance_micros=balance_after,
            threshold_micros=threshold,
            currency=wallets[account_id].currency,
        )
    return plan.answers


def _key_rows(
    charges: Sequence[Charge],
    answers: list[Answer],
    policy: idempotency.KeyPolicy,
    current: datetime,
) -> list[dict[str, Any]]:
    """Each keyed charge's stored answer (completed, stored at `current`), in key order:
    two batches storing the same keys wait for each other in one order."""
    rows = [
        {
            "scope": charge.scope,
            "key": charge.key,
            "fingerprint": charge.fingerprint,
            "status": "completed",
            "response_status": answer.status_code,
            "response_body": answer.body.decode(),
            "created_at": current,
            "locked_at": current,
            "expires_at": current + policy.ttl,
        }
        for charge, answer in zip(charges, answers, strict=True)
        if charge.key is not None
    ]
    rows.sort(key=lambda row: (row["scope"], row["key"]))
    return rows


def _store_keys(session: Session, rows: list[dict[str, Any]]) -> None:
    """Store the keyed charges' answers under their keys, or raise KeysTaken."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        stored = _store_keys_postgresql(session, rows)
    else:
        # executemany: SQLAlchemy sends it as multi-row INSERTs ("insertmanyvalues") and
        # compiles the statement once per process, however many rows a batch has.
        stored = {
            (row.scope, row.key)
            for row in session.execute(
                sqlite_insert(_KEYS)
                .on_conflict_do_nothing(index_elements=["scope", "key"])
                .returning(_KEYS.c.scope, _KEYS.c.key),
                rows,
            )
        }
    wanted = {(row["scope"], row["key"]) for row in rows}
    if stored != wanted:
        raise KeysTaken(wanted - stored)


# One short statement whatever the batch's size: the rows go as arrays. (A multi-row
# VALUES list is a new, long query text for psycopg to parse on every batch.)
_STORE_KEYS_PG = text(
    """
    INSERT INTO idempotency_keys
        (scope, key, fingerprint, status, response_status, response_body,
         created_at, locked_at, expires_at)
    SELECT u.scope, u.key, u.fingerprint, 'completed', u.response_status, u.response_body,
           :created_at, :created_at, :expires_at
    FROM unnest(
        CAST(:scopes AS varchar[]), CAST(:keys AS varchar[]), CAST(:fingerprints AS varchar[]),
        CAST(:statuses AS integer[]), CAST(:bodies AS text[])
    ) AS u(scope, key, fingerprint, response_status, response_body)
    ON CONFLICT (scope, key) DO NOTHING
    RETURNING scope, key
    """
)


def _store_keys_postgresql(session: Session, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    result = session.execute(
        _STORE_KEYS_PG,
        {
            "scopes": [row["scope"] for row in rows],
            "keys": [row["key"] for row in rows],
            "fingerprints": [row["fingerprint"] for row in rows],
            "statuses": [row["response_status"] for row in rows],
            "bodies": [row["response_body"] for row in rows],
            "created_at": rows[0]["created_at"],
            "expires_at": rows[0]["expires_at"],
        },
    )
    return {(row.scope, row.key) for row in result}


# --- PostgreSQL: the same batch, the wallets locked for one exchange -----------------------
#
# `write` costs a round trip per statement and SQLAlchemy's work on each; on PostgreSQL the
# committer sends the batch through psycopg's pipeline instead: the wallets' lock and the
# probe of the stored keys in one exchange (the rows are needed to split the charges), then
# the write statement and COMMIT in the next. psycopg adds an exchange of its own before
# (BEGIN) and after (the pipeline's closing sync), neither while the wallets are locked.
# Every statement is short and the same whatever the batch's size (rows go as arrays), so
# psycopg prepares it once per connection.

_LOCK_PG = """
    SELECT account_id, currency, subscription_micros, promotional_micros, purchased_micros,
           auto_funding_enabled, auto_funding_armed, charge_threshold_micros
    FROM wallets WHERE account_id = ANY(%s) ORDER BY account_id FOR UPDATE
"""
# One statement writes the whole batch, so the pipeline's second round trip carries two
# messages (this and COMMIT) whatever the batch holds; an empty array writes no row. The
# keys' INSERT is a plain one: a key already stored fails the statement (UniqueViolation)
# and with it the transaction. No `>=` guard on the wallets as in `_update_wallets`: the
# rows are locked since `_LOCK_PG` read them, and the table's CHECK constraints (no bucket
# below zero) fail the transaction if a bucket would go negative anyway. (The postings'
# foreign key is checked at the end of the statement, when their transactions are in.)
_WRITE_PG = """
    WITH keys AS (
        INSERT INTO idempotency_keys
            (scope, key, fingerprint, status, response_status, response_body,
             created_at, locked_at, expires_at)
        SELECT u.scope, u.key, u.fingerprint, 'completed', u.response_status,
               u.response_body, %(now)s, %(now)s, %(expires)s
        FROM unnest(%(k_scope)s::varchar[], %(k_key)s::varchar[], %(k_fingerprint)s::varchar[],
                    %(k_status)s::integer[], %(k_body)s::text[])
            AS u(scope, key, fingerprint, response_status, response_body)
    ), transactions AS (
        INSERT INTO ledger_transactions
            (id, account_id, kind, type, amount_micros, status, balance_after_micros,
             usecase, description, metadata, created_at)
        SELECT u.id, u.account_id, 'usage_charge', 'debit', u.amount_micros, 'succeeded',
               u.balance_after_micros, u.usecase, u.description, u.metadata, u.created_at
        FROM unnest(%(t_id)s::varchar[], %(t_account)s::varchar[], %(t_amount)s::bigint[],
                    %(t_after)s::bigint[], %(t_usecase)s::varchar[],
                    %(t_description)s::varchar[], %(t_metadata)s::json[],
                    %(t_created)s::timestamptz[])
            AS u(id, account_id, amount_micros, balance_after_micros, usecase, description,
                 metadata, created_at)
    ), postings AS (
        INSERT INTO ledger_postings (transaction_id, account_id, ledger_account, amount_micros)
        SELECT u.* FROM unnest(%(p_transaction)s::varchar[], %(p_account)s::varchar[],
                               %(p_ledger)s::varchar[], %(p_amount)s::bigint[])
            AS u(transaction_id, account_id, ledger_account, amount_micros)
    ), debited AS (
        UPDATE wallets AS w SET
            subscription_micros = w.subscription_micros - u.subscription,
            promotional_micros = w.promotional_micros - u.promotional,
            purchased_micros = w.purchased_micros - u.purchased,
            balance_micros = w.balance_micros - u.subscription - u.promotional - u.purchased,
            auto_funding_armed = u.armed,
            updated_at = u.updated_at
        FROM unnest(%(w_account)s::varchar[], %(w_subscription)s::bigint[],
                    %(w_promotional)s::bigint[], %(w_purchased)s::bigint[],
                    %(w_armed)s::boolean[], %(w_updated)s::timestamptz[])
            AS u(account_id, subscription, promotional, purchased, armed, updated_at)
        WHERE w.account_id = u.account_id
        RETURNING 1
    )
    -- Every wallet the plan debited was updated, or the statement fails (division by
    -- zero) and the transaction with it: no ledger rows without their wallet's change.
    SELECT 1 / (CASE WHEN (SELECT count(*) FROM debited) = %(w_count)s THEN 1 ELSE 0 END)
"""
_TAKEN_PG = """
    SELECT k.scope, k.key FROM idempotency_keys AS k
    JOIN unnest(%s::varchar[], %s::varchar[]) AS u(scope, key)
        ON k.scope = u.scope AND k.key = u.key
"""


def write_pipelined(
    connection: psycopg.Connection[Any],
    charges: Sequence[Charge],
    policy: idempotency.KeyPolicy,
) -> list[Answer] | None:
    """`write` on PostgreSQL over a psycopg connection in its own transaction (committed
    here), through psycopg's pipeline. The wallets are locked for one exchange with the
    server and the commit: BEGIN, then the lock and the probe of the stored keys, then the
    writes and COMMIT (with psycopg's own syncs, four exchanges in all).

    None, with nothing written, when a wallet crosses its auto-funding threshold (the
    caller writes that batch with `write`, which also announces the crossing). KeysTaken,
    with nothing written, when a key is already stored: found by the probe, or (a key
    stored by another transaction meanwhile) by the INSERT. NotWritten when the batch
    surely wrote nothing and may be sent again (see `_outcome`)."""
    _check_keys_unique(charges)
    plan: _Plan | None = None
    taken: set[tuple[str, str]] = set()
    committed = False
    try:
        with connection.pipeline():
            try:
                wallets = connection.execute(_LOCK_PG, _lock_parameters(charges))
                stored = connection.execute(_TAKEN_PG, _taken_parameters(charges))
                wallet_rows, stored_rows = wallets.fetchall(), stored.fetchall()
            except psycopg.OperationalError as exc:
                raise _lost(connection, exc) from exc
            plan = _plan(charges, _wallet_states(wallet_rows))
            taken = {(row[0], row[1]) for row in stored_rows}
            if plan.low_balance or taken:
                connection.rollback()
            else:
                connection.execute(_WRITE_PG, _write_parameters(charges, plan, policy))
                connection.commit()
                committed = True
    except psycopg.errors.UniqueViolation as exc:
        connection.rollback()
        if exc.diag.table_name != _KEYS.name:
            raise
        stored = connection.execute(_TAKEN_PG, _taken_parameters(charges))
        taken = {(row[0], row[1]) for row in stored.fetchall()}
        connection.rollback()
    except BaseException as exc:
        if not (committed and isinstance(exc, Exception)):
            if not connection.closed:
                connection.rollback()
            raise
        _log_after_commit(exc)
    return _outcome(plan, taken, committed)


async def write_pipelined_async(
    connection: psycopg.AsyncConnection[Any],
    charges: Sequence[Charge],
    policy: idempotency.KeyPolicy,
) -> list[Answer] | None:
    """`write_pipelined` for an event loop (the same statements, the same outcomes)."""
    _check_keys_unique(charges)
    plan: _Plan | None = None
    taken: set[tuple[str, str]] = set()
    committed = False
    try:
        async with connection.pipeline():
            try:
                wallets = await connection.execute(_LOCK_PG, _lock_parameters(charges))
                stored = await connection.execute(_TAKEN_PG, _taken_parameters(charges))
                wallet_rows, stored_rows = await wallets.fetchall(), await stored.fetchall()
            except psycopg.OperationalError as exc:
                raise _lost(connection, exc) from exc
            plan = _plan(charges, _wallet_states(wallet_rows))
            taken = {(row[0], row[1]) for row in stored_rows}
            if plan.low_balance or taken:
                await connection.rollback()
            else:
                await connection.execute(_WRITE_PG, _write_parameters(charges, plan, policy))
                await connection.commit()
                committed = True
    except psycopg.errors.UniqueViolation as exc:
        await connection.rollback()
        if exc.diag.table_name != _KEYS.name:
            raise
        stored = await connection.execute(_TAKEN_PG, _taken_parameters(charges))
        taken = {(row[0], row[1]) for row in await stored.fetchall()}
        await connection.rollback()
    except BaseException as exc:
        if not (committed and isinstance(exc, Exception)):
            if not connection.closed:
                await connection.rollback()
            raise
        _log_after_commit(exc)
    return _outcome(plan, taken, committed)


def _lost(
    connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
    exc: psycopg.OperationalError,
) -> Exception:
    """An error before any write was sent: NotWritten if the connection is gone (the batch
    may go again on a new one), the error itself otherwise (a timeout, a deadlock)."""
    if connection.closed or connection.broken:
        return NotWritten(exc)
    return exc


def _log_after_commit(exc: Exception) -> None:
    # COMMIT answered, so the batch is durable and its answers stand: failing them now
    # would make an unkeyed client's retry a second charge.
    log.warning("usage batch committed; an error followed its commit", exc_info=exc)


def _outcome(
    plan: _Plan | None, taken: set[tuple[str, str]], committed: bool
) -> list[Answer] | None:
    """What a pipelined write answers: the answers only if COMMIT answered; KeysTaken for
    stored keys; None for a threshold crossing; and NotWritten when a key's INSERT clashed
    but no key is found stored any more (removed meanwhile): all was rolled back, so the
    batch may simply go again. Never the answers of a batch that was not committed."""
    if committed:
        assert plan is not None
        return plan.answers
    if taken:
        raise KeysTaken(taken)
    if plan is not None and plan.low_balance:
        return None
    raise NotWritten("the batch was rolled back: a key it stored clashed, then was gone")


def _lock_parameters(charges: Sequence[Charge]) -> tuple[list[str]]:
    return (sorted({c.account_id for c in charges}),)


def _wallet_states(rows: Sequence[Any]) -> dict[str, _WalletState]:
    """The locked wallets' rows (`_lock`'s or `_LOCK_PG`'s columns) as their state."""
    return {
        row[0]: _WalletState(
            account_id=row[0],
            currency=row[1],
            buckets={"subscription": row[2], "promotional": row[3], "purchased": row[4]},
            taken=dict.fromkeys(BUCKETS, 0),
            auto_funding_enabled=bool(row[5]),
            armed=bool(row[6]),
            threshold=row[7],
        )
        for row in rows
    }


def _taken_parameters(charges: Sequence[Charge]) -> tuple[list[str], list[str]]:
    keyed = [(c.scope, c.key) for c in charges if c.key is not None]
    return [scope for scope, _ in keyed], [key for _, key in keyed]


def _write_parameters(
    charges: Sequence[Charge], plan: _Plan, policy: idempotency.KeyPolicy
) -> dict[str, Any]:
    """`_WRITE_PG`'s arrays: a column each."""
    current = wall_now()
    keys = _key_rows(charges, plan.answers, policy, current)
    transactions, postings, wallets = plan.transactions, plan.postings, plan.debited
    return {
        "now": current,
        "expires": current + policy.ttl,
        "k_scope": [k["scope"] for k in keys],
        "k_key": [k["key"] for k in keys],
        "k_fingerprint": [k["fingerprint"] for k in keys],
        "k_status": [k["response_status"] for k in keys],
        "k_body": [k["response_body"] for k in keys],
        "t_id": [t["id"] for t in transactions],
        "t_account": [t["account_id"] for t in transactions],
        "t_amount": [t["amount_micros"] for t in transactions],
        "t_after": [t["balance_after_micros"] for t in transactions],
        "t_usecase": [t["usecase"] for t in transactions],
        "t_description": [t["description"] for t in transactions],
        # As the engine's JSON columns store it: exact decimals, None as JSON null.
        "t_metadata": [simplejson.dumps(t["metadata"], use_decimal=True) for t in transactions],
        "t_created": [t["created_at"] for t in transactions],
        "p_transaction": [p["transaction_id"] for p in postings],
        "p_account": [p["account_id"] for p in postings],
        "p_ledger": [p["ledger_account"] for p in postings],
        "p_amount": [p["amount_micros"] for p in postings],
        "w_account": [w.account_id for w in wallets],
        "w_subscription": [w.taken["subscription"] for w in wallets],
        "w_promotional": [w.taken["promotional"] for w in wallets],
        "w_purchased": [w.taken["purchased"] for w in wallets],
        "w_armed": [w.armed for w in wallets],
        "w_updated": [w.updated_at for w in wallets],
        "w_count": len(wallets),
    }


def _update_wallets(session: Session, wallets: list[_WalletState]) -> None:
    """One UPDATE per debited wallet, each bucket lowered by what the batch took from it
    and guarded (never below zero), under the lock taken by `_lock`; sent as one
    executemany (one pipelined round trip on PostgreSQL), its row count checked."""
    if not wallets:
        return
    w = _WALLETS.c
    statement = (
        update(_WALLETS)
        .where(
            w.account_id == bindparam("b_account_id"),
            w.subscription_micros >= bindparam("b_subscription"),
            w.promotional_micros >= bindparam("b_promotional"),
            w.purchased_micros >= bindparam("b_purchased"),
        )
        .values(
            subscription_micros=w.subscription_micros - bindparam("b_subscription"),
            promotional_micros=w.promotional_micros - bindparam("b_promotional"),
            purchased_micros=w.purchased_micros - bindparam("b_purchased"),
            balance_micros=w.balance_micros - bindparam("b_total"),
            auto_funding_armed=bindparam("b_armed"),
            updated_at=bindparam("b_updated_at"),
        )
    )
    rows = [
        {
            "b_account_id": wallet.account_id,
            "b_subscription": wallet.taken["subscription"],
            "b_promotional": wallet.taken["promotional"],
            "b_purchased": wallet.taken["purchased"],
            "b_total": sum(wallet.taken.values()),
            "b_armed": wallet.armed,
            "b_updated_at": wallet.updated_at,
        }
        for wallet in wallets
    ]
    result = session.connection().execute(statement, rows)
    if result.rowcount != len(wallets):
        raise AssertionError("a locked wallet changed under the batch")


__all__ = [
    "KIND",
    "Answer",
    "Charge",
    "KeysTaken",
    "NotWritten",
    "write",
    "write_pipelined",
    "write_pipelined_async",
]
