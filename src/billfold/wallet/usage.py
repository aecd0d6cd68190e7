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
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, ClassVar, cast

import psycopg
import simplejson
from sqlalchemy import Table, bindparam, insert, select, text, update
from sqlalchemy.orm import Session

from billfold import pgwire
from billfold.clock import wall_now
from billfold.db import PackedForm
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
from billfold.jsonenc import render, render_data
from billfold.ledger import service as ledger
from billfold.ledger.models import BUCKETS, LedgerPosting, LedgerTransaction, Wallet
from billfold.money import from_micros
from billfold.wallet import auto_funding, holds
from billfold.wallet.models import HoldStatus, UsageHold

log = logging.getLogger(__name__)

_WALLETS = cast(Table, Wallet.__table__)
_TRANSACTIONS = cast(Table, LedgerTransaction.__table__)
_POSTINGS = cast(Table, LedgerPosting.__table__)
_KEYS = cast(Table, IdempotencyKey.__table__)
_BUCKET_ACCOUNTS = {bucket: ledger.wallet_account(bucket) for bucket in BUCKETS}

KIND = "usage_charge"  # also written out in _WRITE_PG
_LATER = timedelta(microseconds=1)
# Operations per write statement of a batch request (`write_pipelined`): a batch of 1,000
# goes as four statements, the first written while the second is planned.
WRITE_CHUNK = 250


@dataclass(frozen=True, kw_only=True)
class _Keyed:
    """What every operation of a batch carries besides its own fields: its idempotency
    `key` in `scope` (None: none), the request's fingerprint, and its request id (quoted
    in a refusal)."""

    key: str | None = None
    scope: str = ""
    fingerprint: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class Charge(_Keyed):
    """One usage charge as asked for. `created_at` is the caller's time (an account on a
    test clock charges at its clock's time)."""

    account_id: str
    amount_micros: int
    usecase: str
    description: str | None
    metadata: dict[str, Any] | None
    created_at: datetime


@dataclass(frozen=True)
class HoldCreate(_Keyed):
    """A usage hold as asked for (`POST /usage-holds`), on real time: `created_at` is
    when it was asked; it expires `ttl` later."""

    account_id: str
    amount_micros: int
    usecase: str
    description: str | None
    metadata: dict[str, Any] | None
    ttl: timedelta
    created_at: datetime


@dataclass(frozen=True)
class HoldCapture(_Keyed):
    """A capture of a usage hold as asked for: `amount_micros` None captures all of it;
    `account_id`, when given, must own the hold."""

    hold_id: str
    account_id: str | None
    amount_micros: int | None
    created_at: datetime


# What a batch carries. A hold operation the batch cannot settle plainly (an unknown or
# inactive hold, one past its expiry or on a test clock, a wallet that cannot cover it,
# an auto-funding crossing) is answered None and writes nothing: its caller takes the
# careful path, which answers it as the use case always did.
Op = Charge | HoldCreate | HoldCapture


@dataclass(frozen=True)
class Answer:
    """What one charge answers: the HTTP status and the rendered envelope."""

    status_code: int
    body: bytes


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
    delta: dict[str, int]  # what the batch moves in or out of each bucket (signed)
    auto_funding_enabled: bool
    armed: bool
    threshold: int | None
    changed: bool = False
    updated_at: datetime | None = None

    @property
    def balance(self) -> int:
        return sum(self.buckets.values())

    def move(self, bucket: str, micros: int, at: datetime) -> None:
        self.buckets[bucket] += micros
        self.delta[bucket] += micros
        self.changed = True
        self.updated_at = max(self.updated_at or at, at)

    def spend(self, amount: int, at: datetime) -> dict[str, int]:
        """Take `amount` from the buckets in spending order; what each gave."""
        split = {}
        remaining = amount
        for bucket in BUCKETS:
            take = min(self.buckets[bucket], remaining)
            if take:
                self.move(bucket, -take, at)
                split[bucket] = take
                remaining -= take
        return split

    def crosses_threshold(self, balance_after: int) -> bool:
        """A debit to `balance_after` calls for a top-up (once per crossing, as
        auto_funding.after_debit)."""
        return (
            self.auto_funding_enabled
            and self.threshold is not None
            and balance_after < self.threshold
            and self.armed
        )


@dataclass
class _HoldState:
    """A hold row locked for the batch (and its account's test clock)."""

    id: str
    account_id: str
    amount_micros: int
    split: dict[str, int]
    usecase: str
    description: str | None
    metadata: dict[str, Any] | None
    status: str
    expires_at: datetime
    created_at: datetime
    hold_transaction_id: str
    test_clock_id: str | None
    subscription_expired_micros: int = 0


_w = _WALLETS.c
# Built once (each call binds its values): building a statement costs more than a batch's
# share of running it on SQLite, whose one writer makes every microsecond count.
_LOCK = (
    select(
        _w.account_id,
        _w.currency,
        _w.subscription_micros,
        _w.promotional_micros,
        _w.purchased_micros,
        _w.auto_funding_enabled,
        _w.auto_funding_armed,
        _w.charge_threshold_micros,
    )
    .where(_w.account_id.in_(bindparam("account_ids", expanding=True)))
    .order_by(_w.account_id)
    .with_for_update()
)
_UPDATE_WALLETS = (
    update(_WALLETS)
    .where(
        _w.account_id == bindparam("b_account_id"),
        _w.subscription_micros >= bindparam("b_subscription"),
        _w.promotional_micros >= bindparam("b_promotional"),
        _w.purchased_micros >= bindparam("b_purchased"),
    )
    .values(
        subscription_micros=_w.subscription_micros - bindparam("b_subscription"),
        promotional_micros=_w.promotional_micros - bindparam("b_promotional"),
        purchased_micros=_w.purchased_micros - bindparam("b_purchased"),
        balance_micros=_w.balance_micros - bindparam("b_total"),
        auto_funding_armed=bindparam("b_armed"),
        updated_at=bindparam("b_updated_at"),
    )
)
del _w
_INSERT_TRANSACTIONS = insert(_TRANSACTIONS)
_INSERT_POSTINGS = insert(_POSTINGS)


def _lock(session: Session, account_ids: list[str]) -> dict[str, _WalletState]:
    return _wallet_states(session.execute(_LOCK, {"account_ids": account_ids}).all())


def _refusal(exc: BillfoldError, charge: Charge) -> Answer:
    return Answer(exc.status_code, render(error_payload(exc, charge.request_id)))


@dataclass
class _Plan:
    """A batch worked out against its locked wallets and holds: what to answer (None: the
    careful path answers it) and what to write."""

    answers: list[Answer | None] = field(default_factory=list)
    transactions: list[dict[str, Any]] = field(default_factory=list)
    postings: list[dict[str, Any]] = field(default_factory=list)
    changed: list[_WalletState] = field(default_factory=list)
    low_balance: dict[str, tuple[int, int]] = field(default_factory=dict)
    new_holds: list[dict[str, Any]] = field(default_factory=list)
    captured_holds: list[dict[str, Any]] = field(default_factory=list)

    def post(
        self,
        op: Op,
        wallet: _WalletState,
        *,
        kind: str,
        amount: int,
        credit: bool,
        usecase: str,
        description: str | None,
        metadata: dict[str, Any] | None,
        postings: list[tuple[str, int]],
        reference: str | None = None,
        later: bool = False,
    ) -> str:
        """One ledger transaction (its postings sum to zero) at the wallet's balance now,
        at the op's time (`later`: a microsecond after, so a history lists it after the
        transaction the op posted first, as the careful path's clock would)."""
        txn_id = new_id("txn")
        for ledger_account, micros in postings:
            self.postings.append(
                {
                    "transaction_id": txn_id,
                    "account_id": wallet.account_id,
                    "ledger_account": ledger_account,
                    "amount_micros": micros,
                }
            )
        self.transactions.append(
            {
                "id": txn_id,
                "account_id": wallet.account_id,
                "kind": kind,
                "type": "credit" if credit else "debit",
                "amount_micros": amount,
                "status": "succeeded",
                "balance_after_micros": wallet.balance,
                "usecase": usecase,
                "description": description,
                "payment_id": None,
                "reference": reference,
                "metadata": metadata,
                "created_at": op.created_at + _LATER if later else op.created_at,
            }
        )
        return txn_id


def _plan(
    ops: Sequence[Op],
    wallets: dict[str, _WalletState],
    held: dict[str, _HoldState] | None = None,
) -> _Plan:
    """Each operation settled or refused on its own, in order, against `wallets` and the
    holds `held` (both changed in place): the answers, the ledger rows, the holds' rows and
    the wallets' new state; writes nothing."""
    plan = _Plan()
    for op in ops:
        if isinstance(op, Charge):
            plan.answers.append(_plan_charge(plan, op, wallets))
        elif isinstance(op, HoldCreate):
            plan.answers.append(_plan_hold(plan, op, wallets))
        else:
            plan.answers.append(_plan_capture(plan, op, wallets, held or {}))
    plan.changed = [wallet for wallet in wallets.values() if wallet.changed]
    return plan


def _plan_charge(plan: _Plan, charge: Charge, wallets: dict[str, _WalletState]) -> Answer:
    wallet = wallets.get(charge.account_id)
    if wallet is None:
        return _refusal(NotFound("No such account.", code=ErrorCode.ACCOUNT_NOT_FOUND), charge)
    if wallet.balance < charge.amount_micros:
        refused = InsufficientFunds(
            "The wallet balance cannot cover this charge.",
            details={
                "balance": from_micros(wallet.balance),
                "amount": from_micros(charge.amount_micros),
            },
        )
        return _refusal(refused, charge)
    split = wallet.spend(charge.amount_micros, charge.created_at)
    balance_after = wallet.balance
    if wallet.crosses_threshold(balance_after):
        wallet.armed = False
        plan.low_balance[wallet.account_id] = (balance_after, cast(int, wallet.threshold))
    txn_id = plan.post(
        charge,
        wallet,
        kind=KIND,
        amount=charge.amount_micros,
        credit=False,
        usecase=charge.usecase,
        description=charge.description,
        metadata=charge.metadata,
        postings=[
            *((_BUCKET_ACCOUNTS[bucket], -take) for bucket, take in split.items()),
            (ledger.REVENUE_USAGE, charge.amount_micros),
        ],
    )
    # Its fields are what they are (a ledger row's): rendered without a model.
    data: dict[str, Any] = {
        "id": txn_id,
        "account_id": charge.account_id,
        "amount": from_micros(charge.amount_micros),
        "usecase": charge.usecase,
        "balance_after": from_micros(balance_after),
        "created_at": charge.created_at,
    }
    return Answer(201, render_data(data))


def _plan_hold(plan: _Plan, op: HoldCreate, wallets: dict[str, _WalletState]) -> Answer | None:
    """As holds.create: the amount leaves the buckets in spending order for holds:usage,
    and the hold's expiry job is scheduled."""
    wallet = wallets.get(op.account_id)
    if wallet is None or wallet.balance < op.amount_micros:
        return None  # refused by the careful path (404, 402)
    if wallet.crosses_threshold(wallet.balance - op.amount_micros):
        return None  # the careful path announces the crossing
    hold_id = new_id("hold")
    split = wallet.spend(op.amount_micros, op.created_at)
    txn_id = plan.post(
        op,
        wallet,
        kind=holds.HOLD_KIND,
        amount=op.amount_micros,
        credit=False,
        usecase=op.usecase,
        description=op.description,
        metadata={**(op.metadata or {}), "hold_id": hold_id},
        postings=[
            *((_BUCKET_ACCOUNTS[bucket], -take) for bucket, take in split.items()),
            (ledger.HOLDS_USAGE, op.amount_micros),
        ],
        reference=f"hold:{hold_id}",
    )
    row = {
        "id": hold_id,
        "account_id": op.account_id,
        "amount_micros": op.amount_micros,
        "captured_micros": 0,
        **{f"{bucket}_micros": split.get(bucket, 0) for bucket in BUCKETS},
        "usecase": op.usecase,
        "description": op.description,
        "meta": op.metadata,
        "status": HoldStatus.HELD.value,
        "expires_at": op.created_at + op.ttl,
        "created_at": op.created_at,
        "hold_transaction_id": txn_id,
    }
    plan.new_holds.append(row)
    return _hold_answer(201, row, wallet.balance)


def _plan_capture(
    plan: _Plan, op: HoldCapture, wallets: dict[str, _WalletState], held: dict[str, _HoldState]
) -> Answer | None:
    """As holds.capture: the whole hold goes back to its buckets (a credit), then the
    captured amount is charged as usage from the hold's own buckets in spending order."""
    hold = held.get(op.hold_id)
    if hold is None:
        return None
    captured = hold.amount_micros if op.amount_micros is None else op.amount_micros
    if (
        hold.test_clock_id is not None
        or (op.account_id is not None and op.account_id != hold.account_id)
        or hold.status != HoldStatus.HELD
        or hold.expires_at <= op.created_at
        or not 0 < captured <= hold.amount_micros
        or hold.account_id not in wallets
        or hold.subscription_expired_micros
    ):
        # The careful path answers it (404, 409, an expiry, a test clock, included credit
        # held past its grant's expiry).
        return None
    wallet = wallets[hold.account_id]
    hold.status = HoldStatus.CAPTURED  # a second capture in the batch: the careful path
    for bucket in BUCKETS:
        if hold.split[bucket]:
            wallet.move(bucket, hold.split[bucket], op.created_at)
    release_id = plan.post(
        op,
        wallet,
        kind=holds.RELEASE_KIND,
        amount=hold.amount_micros,
        credit=True,
        usecase=hold.usecase,
        description=hold.description,
        metadata={"hold_id": hold.id},
        postings=[
            *((_BUCKET_ACCOUNTS[b], hold.split[b]) for b in BUCKETS if hold.split[b]),
            (ledger.HOLDS_USAGE, -hold.amount_micros),
        ],
        reference=f"hold_release:{hold.id}",
    )
    spent = []
    remaining = captured
    for bucket in BUCKETS:  # the hold's own buckets, in spending order
        take = min(hold.split[bucket], remaining)
        if take:
            wallet.move(bucket, -take, op.created_at)
            spent.append((_BUCKET_ACCOUNTS[bucket], -take))
            remaining -= take
    charge_id = plan.post(
        op,
        wallet,
        kind=KIND,
        amount=captured,
        credit=False,
        usecase=hold.usecase,
        description=hold.description,
        metadata={**(hold.metadata or {}), "hold_id": hold.id},
        postings=[*spent, (ledger.REVENUE_USAGE, captured)],
        reference=f"hold_capture:{hold.id}",
        later=True,
    )
    # The release re-arms auto-funding when it lifts the balance to the threshold; the
    # capture keeps it disarmed if it ends under it (holds._keep_auto_funding_disarmed).
    wallet.armed = wallet.armed or wallet.threshold is None or wallet.balance >= wallet.threshold
    row = {
        "id": hold.id,
        "account_id": hold.account_id,
        "amount_micros": hold.amount_micros,
        "captured_micros": captured,
        **{f"{bucket}_micros": hold.split[bucket] for bucket in BUCKETS},
        "usecase": hold.usecase,
        "description": hold.description,
        "meta": hold.metadata,
        "status": HoldStatus.CAPTURED.value,
        "expires_at": hold.expires_at,
        "created_at": hold.created_at,
        "resolved_at": op.created_at,
        "hold_transaction_id": hold.hold_transaction_id,
        "release_transaction_id": release_id,
        "charge_transaction_id": charge_id,
    }
    plan.captured_holds.append(row)
    return _hold_answer(200, row, wallet.balance)


_UNRESOLVED = {"resolved_at": None, "release_transaction_id": None, "charge_transaction_id": None}


def _hold_answer(status_code: int, row: dict[str, Any], balance_after: int) -> Answer:
    """The hold's answer as the careful path renders it (`holds.hold_view`, whose keys and
    values `UsageHoldOut` passes through unchanged), from the row as a plain object: no ORM
    instance and no model validation per answer."""
    hold = cast(UsageHold, SimpleNamespace(**{**_UNRESOLVED, **row}))  # the fields it reads
    view = holds.hold_view(hold, balance_after_micros=balance_after)
    return Answer(status_code, render({"data": view}))


def _check_keys_unique(charges: Sequence[Op]) -> None:
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
    accounts = sorted({c.account_id for c in charges})
    raw = _SqliteWrites.of(session)
    wallets = raw.lock(accounts) if raw is not None else _lock(session, accounts)
    plan = _plan(charges, wallets)
    answers = [answer for answer in plan.answers if answer is not None]
    assert len(answers) == len(charges)  # a charge is always charged or refused here
    _store_keys(session, _key_rows(charges, answers, policy, wall_now()), raw)
    if raw is not None:
        raw.write(plan)
    else:
        if plan.transactions:
            session.execute(_INSERT_TRANSACTIONS, plan.transactions)
            session.execute(_INSERT_POSTINGS, plan.postings)
        _update_wallets(session, plan.changed)
    for account_id, (balance_after, threshold) in plan.low_balance.items():
        auto_funding.announce_low_balance(
            session,
            account_id=account_id,
            balance_micros=balance_after,
            threshold_micros=threshold,
            currency=wallets[account_id].currency,
        )
    return answers


class _SqliteWrites:
    """`write`'s statements on SQLite, on the session's own sqlite3 connection (in its
    transaction, begun IMMEDIATE behind the writer gate): the statements above, compiled
    once for SQLite, each value made by its type's own bind processor, without SQLAlchemy's
    execution machinery, which took about half of a small batch's time behind the gate
    (1.3 of 2.3 ms for four charges), and every other process's writer waits that long."""

    # (statement, column keys) -> its SQL, its parameters' names in order, their processors
    _compiled: ClassVar[
        dict[tuple[Any, tuple[str, ...]], tuple[str, tuple[str, ...], tuple[Any, ...]]]
    ] = {}

    def __init__(self, connection: sqlite3.Connection, dialect: Any) -> None:
        self.cursor = connection.cursor()
        self.dialect = dialect
        self.most_variables = connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)

    @classmethod
    def of(cls, session: Session) -> _SqliteWrites | None:
        connection = session.connection()
        if connection.dialect.name != "sqlite":
            return None
        driver = connection.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        return cls(driver, connection.dialect)

    def _processor(self, type_: Any) -> Any:
        return type_.dialect_impl(self.dialect).bind_processor(self.dialect)

    def _statement(
        self, statement: Any, keys: tuple[str, ...] = ()
    ) -> tuple[str, tuple[str, ...], tuple[Any, ...]]:
        found = self._compiled.get((statement, keys))
        if found is None:
            compiled = statement.compile(dialect=self.dialect, column_keys=list(keys) or None)
            names = tuple(compiled.positiontup or ())
            processors = tuple(self._processor(compiled.binds[name].type) for name in names)
            found = self._compiled[(statement, keys)] = (compiled.string, names, processors)
        return found

    def _execute_many(
        self, statement: Any, rows: list[dict[str, Any]], keys: tuple[str, ...] = ()
    ) -> None:
        sql, names, processors = self._statement(statement, keys)
        self.cursor.executemany(
            sql,
            [_bound(processors, [row[name] for name in names]) for row in rows],
        )

    def lock(self, account_ids: list[str]) -> dict[str, _WalletState]:
        """The wallets, as `_lock` reads them (the transaction holds SQLite's write lock)."""
        columns = ", ".join(column.name for column in _LOCK.selected_columns)
        rows = self.cursor.execute(
            f"SELECT {columns} FROM wallets"  # noqa: S608
            f" WHERE account_id IN ({', '.join('?' * len(account_ids))}) ORDER BY account_id",
            account_ids,
        ).fetchall()
        return _wallet_states(rows)

    def store_keys(self, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
        """The keys stored, in multi-row INSERTs of as many rows as SQLite takes variables
        for (a key stored before is left as it is and not returned)."""
        columns = tuple(_KEYS.c.keys())
        processors = [self._processor(_KEYS.c[name].type) for name in columns]
        marks = f"({', '.join('?' * len(columns))})"
        per_statement = max(1, self.most_variables // len(columns))
        stored: set[tuple[str, str]] = set()
        for start in range(0, len(rows), per_statement):
            part = rows[start : start + per_statement]
            stored.update(
                (found[0], found[1])
                for found in self.cursor.execute(
                    f"INSERT INTO idempotency_keys ({', '.join(columns)})"  # noqa: S608
                    f" VALUES {', '.join([marks] * len(part))}"
                    " ON CONFLICT (scope, key) DO NOTHING RETURNING scope, key",
                    [
                        value
                        for row in part
                        for value in _bound(processors, [row[name] for name in columns])
                    ],
                )
            )
        return stored

    def write(self, plan: _Plan) -> None:
        """The ledger rows and the wallets' moves, as `write` sends them on PostgreSQL."""
        if plan.transactions:
            self._execute_many(_INSERT_TRANSACTIONS, plan.transactions, tuple(plan.transactions[0]))
            self._execute_many(_INSERT_POSTINGS, plan.postings, tuple(plan.postings[0]))
        if plan.changed:
            self._execute_many(_UPDATE_WALLETS, [_wallet_update(w) for w in plan.changed])
            if self.cursor.rowcount != len(plan.changed):
                raise AssertionError("a locked wallet changed under the batch")


def _bound(processors: Sequence[Any], values: list[Any]) -> list[Any]:
    """`values` as their columns' bind processors (None: as they are) send them."""
    return [
        value if process is None else process(value)
        for process, value in zip(processors, values, strict=True)
    ]


def _wallet_update(wallet: _WalletState) -> dict[str, Any]:
    """`_UPDATE_WALLETS`'s parameters for `wallet`: what the batch took from each bucket
    (positive) and in all, and the wallet's new state."""
    return {
        "b_account_id": wallet.account_id,
        "b_subscription": -wallet.delta["subscription"],
        "b_promotional": -wallet.delta["promotional"],
        "b_purchased": -wallet.delta["purchased"],
        "b_total": -sum(wallet.delta.values()),
        "b_armed": wallet.armed,
        "b_updated_at": wallet.updated_at,
    }


def _key_rows(
    charges: Sequence[Op],
    answers: Sequence[Answer | None],
    policy: idempotency.KeyPolicy,
    current: datetime,
) -> list[dict[str, Any]]:
    """Each keyed operation's stored answer (completed, stored at `current`), in key
    order: two batches storing the same keys wait for each other in one order. One the
    careful path answers (None) stores nothing here."""
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
        if charge.key is not None and answer is not None
    ]
    rows.sort(key=lambda row: (row["scope"], row["key"]))
    return rows


def _store_keys(session: Session, rows: list[dict[str, Any]], raw: _SqliteWrites | None) -> None:
    """Store the keyed charges' answers under their keys, or raise KeysTaken."""
    if not rows:
        return
    stored = raw.store_keys(rows) if raw is not None else _store_keys_postgresql(session, rows)
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
    FROM wallets WHERE account_id = ANY(%s::varchar[]) ORDER BY account_id FOR UPDATE
"""
# A batch that captures holds also locks the wallets of those holds (a hold's account
# never changes), all in account order; then the holds, with their account's test clock:
# the lock order of every wallet write (wallet, then hold).
_LOCK_WITH_HOLDS_PG = """
    SELECT account_id, currency, subscription_micros, promotional_micros, purchased_micros,
           auto_funding_enabled, auto_funding_armed, charge_threshold_micros
    FROM wallets
    WHERE account_id = ANY(%s::varchar[] || ARRAY(
        SELECT account_id FROM usage_holds WHERE id = ANY(%s::varchar[])))
    ORDER BY account_id FOR UPDATE
"""
_HOLDS_PG = """
    SELECT h.id, h.account_id, h.amount_micros, h.subscription_micros, h.promotional_micros,
           h.purchased_micros, h.usecase, h.description, h.metadata::text, h.status,
           h.expires_at, h.created_at, h.hold_transaction_id, a.test_clock_id,
           h.subscription_expired_micros
    FROM usage_holds AS h JOIN accounts AS a ON a.id = h.account_id
    WHERE h.id = ANY(%s::varchar[]) ORDER BY h.id FOR UPDATE OF h
"""
# One statement writes the whole batch, so the pipeline's second round trip carries two
# messages (this and COMMIT) whatever the batch holds; an empty array writes no row. The
# keys' INSERT is a plain one: a key already stored fails the statement (UniqueViolation)
# and with it the transaction. No `>=` guard on the wallets as in `_update_wallets`: the
# rows are locked since `_LOCK_PG` read them, and the table's CHECK constraints (no bucket
# below zero) fail the transaction if a bucket would go negative anyway. (The postings'
# foreign key is checked at the end of the statement, when their transactions are in.)
# Two forms: `_WRITE_PG` for a batch of usage charges only (the hot path: the fewest
# arrays), `_WRITE_HOLDS_PG` for one that also creates or captures holds. A new hold
# queues no job: the sweep (holds.schedule_sweep) expires it. (The holds' statuses are
# written out, as KIND is.)
_KEYS_CTE = """
    keys AS (
        INSERT INTO idempotency_keys
            (scope, key, fingerprint, status, response_status, response_body,
             created_at, locked_at, expires_at)
        SELECT u.scope, u.key, u.fingerprint, 'completed', u.response_status,
               u.response_body, %(now)s, %(now)s, %(expires)s
        FROM unnest(%(k_scope)s::varchar[], %(k_key)s::varchar[], %(k_fingerprint)s::varchar[],
                    %(k_status)s::integer[], %(k_body)s::text[])
            AS u(scope, key, fingerprint, response_status, response_body)
    )"""
_CHARGES_CTE = """
    transactions AS (
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
    )"""
_TRANSACTIONS_CTE = """
    transactions AS (
        INSERT INTO ledger_transactions
            (id, account_id, kind, type, amount_micros, status, balance_after_micros,
             usecase, description, reference, metadata, created_at)
        SELECT u.id, u.account_id, u.kind, u.type, u.amount_micros, 'succeeded',
               u.balance_after_micros, u.usecase, u.description, u.reference, u.metadata,
               u.created_at
        FROM unnest(%(t_id)s::varchar[], %(t_account)s::varchar[], %(t_kind)s::varchar[],
                    %(t_type)s::varchar[], %(t_amount)s::bigint[], %(t_after)s::bigint[],
                    %(t_usecase)s::varchar[], %(t_description)s::varchar[],
                    %(t_reference)s::varchar[], %(t_metadata)s::json[],
                    %(t_created)s::timestamptz[])
            AS u(id, account_id, kind, type, amount_micros, balance_after_micros, usecase,
                 description, reference, metadata, created_at)
    )"""
_POSTINGS_CTE = """
    postings AS (
        INSERT INTO ledger_postings (transaction_id, account_id, ledger_account, amount_micros)
        SELECT u.* FROM unnest(%(p_transaction)s::varchar[], %(p_account)s::varchar[],
                               %(p_ledger)s::varchar[], %(p_amount)s::bigint[])
            AS u(transaction_id, account_id, ledger_account, amount_micros)
    )"""
_HOLDS_CTES = """
    new_holds AS (
        INSERT INTO usage_holds
            (id, account_id, amount_micros, captured_micros, subscription_micros,
             promotional_micros, purchased_micros, usecase, description, metadata, status,
             expires_at, created_at, hold_transaction_id)
        SELECT u.id, u.account_id, u.amount, 0, u.subscription, u.promotional, u.purchased,
               u.usecase, u.description, u.metadata, 'held', u.expires_at, u.created_at,
               u.transaction_id
        FROM unnest(%(h_id)s::varchar[], %(h_account)s::varchar[], %(h_amount)s::bigint[],
                    %(h_subscription)s::bigint[], %(h_promotional)s::bigint[],
                    %(h_purchased)s::bigint[], %(h_usecase)s::varchar[],
                    %(h_description)s::varchar[], %(h_metadata)s::json[],
                    %(h_expires)s::timestamptz[], %(h_created)s::timestamptz[],
                    %(h_transaction)s::varchar[])
            AS u(id, account_id, amount, subscription, promotional, purchased, usecase,
                 description, metadata, expires_at, created_at, transaction_id)
    ), captured AS (
        UPDATE usage_holds AS h SET
            status = 'captured', captured_micros = u.captured, resolved_at = u.resolved_at,
            release_transaction_id = u.release_id, charge_transaction_id = u.charge_id
        FROM unnest(%(c_id)s::varchar[], %(c_captured)s::bigint[],
                    %(c_resolved)s::timestamptz[], %(c_release)s::varchar[],
                    %(c_charge)s::varchar[])
            AS u(id, captured, resolved_at, release_id, charge_id)
        WHERE h.id = u.id AND h.status = 'held'
        RETURNING 1
    )"""
_WALLETS_CTE = """
    changed AS (
        UPDATE wallets AS w SET
            subscription_micros = w.subscription_micros + u.subscription,
            promotional_micros = w.promotional_micros + u.promotional,
            purchased_micros = w.purchased_micros + u.purchased,
            balance_micros = w.balance_micros + u.subscription + u.promotional + u.purchased,
            auto_funding_armed = u.armed,
            updated_at = u.updated_at
        FROM unnest(%(w_account)s::varchar[], %(w_subscription)s::bigint[],
                    %(w_promotional)s::bigint[], %(w_purchased)s::bigint[],
                    %(w_armed)s::boolean[], %(w_updated)s::timestamptz[])
            AS u(account_id, subscription, promotional, purchased, armed, updated_at)
        WHERE w.account_id = u.account_id
        RETURNING 1
    )"""
# Every wallet the plan changed (and every hold it captured) was updated, or the statement
# fails (division by zero) and the transaction with it: no ledger rows without their
# wallet's change. (Put together from the module's constants only, never from input.)
_WRITE_PG = (
    f"WITH {_KEYS_CTE}, {_CHARGES_CTE}, {_POSTINGS_CTE}, {_WALLETS_CTE}"  # noqa: S608
    " SELECT 1 / (CASE WHEN (SELECT count(*) FROM changed) = %(w_count)s THEN 1 ELSE 0 END)"
)
_WRITE_HOLDS_PG = (
    f"WITH {_KEYS_CTE}, {_TRANSACTIONS_CTE}, {_POSTINGS_CTE}, {_HOLDS_CTES}, {_WALLETS_CTE}"  # noqa: S608
    " SELECT 1 / (CASE WHEN (SELECT count(*) FROM changed) = %(w_count)s"
    " AND (SELECT count(*) FROM captured) = %(c_count)s THEN 1 ELSE 0 END)"
)
_TAKEN_PG = """
    SELECT k.scope, k.key FROM idempotency_keys AS k
    JOIN unnest(%(scopes)s::varchar[], %(keys)s::varchar[]) AS u(scope, key)
        ON k.scope = u.scope AND k.key = u.key
"""
# The same writes with each array packed into one text (`db.PackedForm`): psycopg dumps an
# array element by element in Python and a JSON document escapes every quote of the stored
# answers, at 1,000 charges either a fifth to a quarter of the request's time. No value of
# these columns holds a control character (ids, printable keys, CleanText, rendered JSON,
# numbers, times); a column that cannot be packed anyway sends the batch as arrays.
# The probe of stored keys likewise (keys are printable ASCII).
_PACKED = {
    statement: PackedForm(statement) for statement in (_WRITE_PG, _WRITE_HOLDS_PG, _TAKEN_PG)
}


# Plans by key only. Every statement above reads or writes rows by their key (a wallet, a
# hold, a stored key), a few rows per batch item: the right plan is a nested loop over the
# batch's rows with an index lookup each, whatever the tables' sizes. PostgreSQL, left to
# itself, caches a generic plan for a prepared statement after five runs, priced on the
# tables as they are then: made while idempotency_keys is small, it scans the whole table
# (a hash join), and keeps doing so while the table grows (5 ms a batch at 25,000 keys,
# seen on a committer's connection). With sequential scans and hash and merge joins priced
# out for the transaction (in the transaction itself, so that it holds behind PgBouncer
# too), the only plans left are the keyed ones, and caching them costs nothing later.
_KEYED_PLANS = """
    SELECT set_config('enable_seqscan', 'off', true), set_config('enable_hashjoin', 'off', true),
           set_config('enable_mergejoin', 'off', true)
"""


# The same statements as `pgwire` sends them (prepared once per connection, by name).
_WIRE = {
    sql: pgwire.Statement.of(name, sql)
    for name, sql in [
        ("usage_keyed_plans", _KEYED_PLANS),
        ("usage_lock", _LOCK_PG),
        ("usage_lock_with_holds", _LOCK_WITH_HOLDS_PG),
        ("usage_holds", _HOLDS_PG),
        ("usage_taken", _TAKEN_PG),
        ("usage_taken_packed", _PACKED[_TAKEN_PG].sql),
        ("usage_write", _WRITE_PG),
        ("usage_write_packed", _PACKED[_WRITE_PG].sql),
        ("usage_write_holds", _WRITE_HOLDS_PG),
        ("usage_write_holds_packed", _PACKED[_WRITE_HOLDS_PG].sql),
    ]
}


def _wire(sql: str, parameters: Any) -> pgwire.Sent:
    return _WIRE[sql], parameters


def write_pipelined(
    connection: psycopg.Connection[Any],
    charges: Sequence[Op],
    policy: idempotency.KeyPolicy,
) -> list[Answer | None] | None:
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
                captures = _capture_parameters(charges)
                connection.execute(_KEYED_PLANS)
                wallets = connection.execute(*_lock_statement(charges))
                held = connection.execute(_HOLDS_PG, captures) if captures[0] else None
                stored = connection.execute(*_taken(charges))
                wallet_rows, stored_rows = wallets.fetchall(), stored.fetchall()
                hold_rows = held.fetchall() if held is not None else []
            except psycopg.OperationalError as exc:
                raise _lost(connection, exc) from exc
            taken = {(row[0], row[1]) for row in stored_rows}
            if not taken:
                plan = _send_in_chunks(
                    connection,
                    charges,
                    _wallet_states(wallet_rows),
                    _hold_states(hold_rows),
                    policy,
                )
            if plan is None or plan.low_balance:
                connection.rollback()
            else:
                connection.commit()
                committed = True
    except psycopg.errors.UniqueViolation as exc:
        connection.rollback()
        if exc.diag.table_name != _KEYS.name:
            raise
        stored = connection.execute(*_taken(charges))
        taken = {(row[0], row[1]) for row in stored.fetchall()}
        connection.rollback()
    except BaseException as exc:
        if not (committed and isinstance(exc, Exception)):
            if not connection.closed:
                connection.rollback()
            raise
        _log_after_commit(exc)
    return _outcome(plan, taken, committed)


def _send_in_chunks(
    connection: psycopg.Connection[Any],
    ops: Sequence[Op],
    wallets: dict[str, _WalletState],
    held: dict[str, _HoldState],
    policy: idempotency.KeyPolicy,
) -> _Plan:
    """Plan the batch and send its writes WRITE_CHUNK operations at a time, into the open
    transaction: the server writes one chunk while the next is planned (a batch of 1,000
    spent a quarter of its time planning while the server waited, then the server wrote
    while Python waited). Each chunk's statement moves its wallets by that chunk's own
    deltas. Stops at the first chunk with a threshold crossing (the plan's `low_balance`:
    the caller rolls back and the batch goes the way that announces it)."""
    whole = _Plan()
    for start in range(0, len(ops), WRITE_CHUNK):
        chunk = ops[start : start + WRITE_CHUNK]
        part = _plan(chunk, wallets, held)
        whole.answers += part.answers
        if part.low_balance:
            whole.low_balance = part.low_balance
            break
        connection.execute(*_write_statement(chunk, part, policy))
        for wallet in part.changed:  # the next chunk moves it on from here
            wallet.delta = dict.fromkeys(BUCKETS, 0)
            wallet.changed = False
    return whole


async def write_pipelined_async(
    connection: psycopg.AsyncConnection[Any],
    charges: Sequence[Op],
    policy: idempotency.KeyPolicy,
) -> list[Answer | None] | None:
    """`write_pipelined` for an event loop (the same statements, the same outcomes), in two
    round trips (`pgwire`): BEGIN, the wallets' lock and the probes in one write; then the
    write statement and COMMIT in the next (or ROLLBACK)."""
    _check_keys_unique(charges)
    plan: _Plan | None = None
    taken: set[tuple[str, str]] = set()
    committed = False
    try:
        captures = _capture_parameters(charges)
        first: list[pgwire.Sent] = [
            pgwire.BEGIN,
            _wire(_KEYED_PLANS, ()),
            _wire(*_lock_statement(charges)),
        ]
        if captures[0]:
            first.append(_wire(_HOLDS_PG, captures))
        first.append(_wire(*_taken(charges)))
        try:
            read = await pgwire.exchange(connection, first)
        except psycopg.OperationalError as exc:
            raise _lost(connection, exc) from exc
        wallet_rows, stored_rows = read[2], read[-1]
        hold_rows = read[3] if captures[0] else []
        plan = _plan(charges, _wallet_states(wallet_rows), _hold_states(hold_rows))
        taken = {(row[0], row[1]) for row in stored_rows}
        if plan.low_balance or taken:
            await pgwire.exchange(connection, [pgwire.ROLLBACK])
        else:
            await pgwire.exchange(
                connection, [_wire(*_write_statement(charges, plan, policy)), pgwire.COMMIT]
            )
            committed = True
    except psycopg.errors.UniqueViolation as exc:
        await pgwire.exchange(connection, [pgwire.ROLLBACK])
        if exc.diag.table_name != _KEYS.name:
            raise
        probed = await pgwire.exchange(connection, [_wire(*_taken(charges))])
        taken = {(row[0], row[1]) for row in probed[0]}
    except BaseException as exc:
        if not (committed and isinstance(exc, Exception)):
            if not connection.closed and not connection.broken:
                await _roll_back_quietly(connection)
            raise
        _log_after_commit(exc)
    return _outcome(plan, taken, committed)


async def _roll_back_quietly(connection: psycopg.AsyncConnection[Any]) -> None:
    """End whatever transaction a failed exchange left open; a connection that cannot is
    closed (the committer opens another). The error that led here is the one raised."""
    try:
        await pgwire.exchange(connection, [pgwire.ROLLBACK])
    except Exception:
        await connection.close()


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
) -> list[Answer | None] | None:
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


def _lock_statement(ops: Sequence[Op]) -> tuple[str, tuple[list[str], ...]]:
    """The wallets' lock for `ops` (with its parameters): the wallets of the holds the
    batch captures too, if it captures any."""
    accounts = sorted({op.account_id for op in ops if not isinstance(op, HoldCapture)})
    holds = _capture_parameters(ops)[0]
    if holds:
        return _LOCK_WITH_HOLDS_PG, (accounts, holds)
    return _LOCK_PG, (accounts,)


def _capture_parameters(ops: Sequence[Op]) -> tuple[list[str]]:
    return (sorted({op.hold_id for op in ops if isinstance(op, HoldCapture)}),)


def _hold_states(rows: Sequence[Any]) -> dict[str, _HoldState]:
    """The locked holds' rows (`_HOLDS_PG`'s columns) as their state."""
    return {
        row[0]: _HoldState(
            id=row[0],
            account_id=row[1],
            amount_micros=row[2],
            split={"subscription": row[3], "promotional": row[4], "purchased": row[5]},
            usecase=row[6],
            description=row[7],
            # As the engine's JSON columns read it: exact decimals.
            metadata=simplejson.loads(row[8], use_decimal=True) if row[8] else None,
            status=row[9],
            # In UTC, as the engine reads them, whatever the session's TimeZone.
            expires_at=row[10].astimezone(UTC),
            created_at=row[11].astimezone(UTC),
            hold_transaction_id=row[12],
            test_clock_id=row[13],
            subscription_expired_micros=row[14],
        )
        for row in rows
    }


def _wallet_states(rows: Sequence[Any]) -> dict[str, _WalletState]:
    """The locked wallets' rows (`_lock`'s or `_LOCK_PG`'s columns) as their state."""
    return {
        row[0]: _WalletState(
            account_id=row[0],
            currency=row[1],
            buckets={"subscription": row[2], "promotional": row[3], "purchased": row[4]},
            delta=dict.fromkeys(BUCKETS, 0),
            auto_funding_enabled=bool(row[5]),
            armed=bool(row[6]),
            threshold=row[7],
        )
        for row in rows
    }


def _taken(charges: Sequence[Op]) -> tuple[str, dict[str, Any]]:
    """The probe of the keyed operations' stored keys, with its parameters: their scopes and
    keys, packed or as arrays."""
    keyed = [c for c in charges if c.key is not None]
    return _PACKED[_TAKEN_PG].sent(
        {"scopes": [c.scope for c in keyed], "keys": [c.key for c in keyed]}
    )


def _write_statement(
    ops: Sequence[Op], plan: _Plan, policy: idempotency.KeyPolicy
) -> tuple[str, dict[str, Any]]:
    """The batch's write statement and its parameters: a column each, packed when every
    column can be."""
    current = wall_now()
    keys = _key_rows(ops, plan.answers, policy, current)
    transactions, postings, wallets = plan.transactions, plan.postings, plan.changed
    new_holds, captured = plan.new_holds, plan.captured_holds
    parameters = {
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
        "t_metadata": [_json(t["metadata"]) for t in transactions],
        "t_created": [t["created_at"] for t in transactions],
        "p_transaction": [p["transaction_id"] for p in postings],
        "p_account": [p["account_id"] for p in postings],
        "p_ledger": [p["ledger_account"] for p in postings],
        "p_amount": [p["amount_micros"] for p in postings],
        "w_account": [w.account_id for w in wallets],
        "w_subscription": [w.delta["subscription"] for w in wallets],
        "w_promotional": [w.delta["promotional"] for w in wallets],
        "w_purchased": [w.delta["purchased"] for w in wallets],
        "w_armed": [w.armed for w in wallets],
        "w_updated": [w.updated_at for w in wallets],
        "w_count": len(wallets),
    }
    statement = _WRITE_PG  # usage charges only
    if new_holds or captured:
        statement = _WRITE_HOLDS_PG
        parameters |= {
            "t_kind": [t["kind"] for t in transactions],
            "t_type": [t["type"] for t in transactions],
            "t_reference": [t["reference"] for t in transactions],
            "h_id": [h["id"] for h in new_holds],
            "h_account": [h["account_id"] for h in new_holds],
            "h_amount": [h["amount_micros"] for h in new_holds],
            "h_subscription": [h["subscription_micros"] for h in new_holds],
            "h_promotional": [h["promotional_micros"] for h in new_holds],
            "h_purchased": [h["purchased_micros"] for h in new_holds],
            "h_usecase": [h["usecase"] for h in new_holds],
            "h_description": [h["description"] for h in new_holds],
            "h_metadata": [_json(h["meta"]) for h in new_holds],
            "h_expires": [h["expires_at"] for h in new_holds],
            "h_created": [h["created_at"] for h in new_holds],
            "h_transaction": [h["hold_transaction_id"] for h in new_holds],
            "c_id": [c["id"] for c in captured],
            "c_captured": [c["captured_micros"] for c in captured],
            "c_resolved": [c["resolved_at"] for c in captured],
            "c_release": [c["release_transaction_id"] for c in captured],
            "c_charge": [c["charge_transaction_id"] for c in captured],
            "c_count": len(captured),
        }
    return _PACKED[statement].sent(parameters)


def _json(value: Any) -> str:
    """As the engine's JSON columns store it: exact decimals, None as JSON null."""
    if value is None:
        return "null"
    encoded: str = simplejson.dumps(value, use_decimal=True)
    return encoded


def _update_wallets(session: Session, wallets: list[_WalletState]) -> None:
    """One UPDATE per debited wallet, each bucket lowered by what the batch took from it
    and guarded (never below zero), under the lock taken by `_lock`; sent as one
    executemany (one pipelined round trip on PostgreSQL), its row count checked."""
    if not wallets:
        return
    result = session.connection().execute(_UPDATE_WALLETS, [_wallet_update(w) for w in wallets])
    if result.rowcount != len(wallets):
        raise AssertionError("a locked wallet changed under the batch")


__all__ = [
    "KIND",
    "Answer",
    "Charge",
    "HoldCapture",
    "HoldCreate",
    "KeysTaken",
    "NotWritten",
    "Op",
    "write",
    "write_pipelined",
    "write_pipelined_async",
]
