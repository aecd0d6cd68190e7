"""On SQLite, `usage.write` sends its statements on the session's sqlite3 connection
(`usage._SqliteWrites`), not through SQLAlchemy's execution: the rows must be the ones the
SQLAlchemy statements write, value for value, as every reader expects them."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Table
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from billfold.accounts import service as accounts
from billfold.application.container import build_services
from billfold.application.usecases import usage as usage_use_cases
from billfold.application.usecases.base import Call
from billfold.config import Settings
from billfold.idempotency.models import IdempotencyKey
from billfold.migrate import upgrade
from billfold.services import Services
from billfold.wallet import usage
from billfold.wallet.funding import fund_wallet
from billfold.wallet.schemas import UsageChargeRequest
from tests.helpers import CARD_OK

AT = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
STORED_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


@pytest.fixture
def sqlite_services(tmp_path: Path) -> Iterator[Services]:
    url = f"sqlite:///{tmp_path / 'writes.db'}"
    upgrade(url)
    services = build_services(Settings(database_url=url, admin_key="test-admin"), "test")
    yield services
    services.database.dispose()


def _funded_account(services: Services, email: str) -> str:
    with services.database.transaction() as session:
        account_id = accounts.create_account(session, email=email, password="pw-123456789").id
    card = services.processor.tokenize_card(
        number=CARD_OK, exp_month="12", exp_year="2045", cvc="123"
    )
    fund_wallet(
        services.database,
        services.processor,
        account_id=account_id,
        amount_micros=10_000_000,
        payment_method_id=card["id"],
        idempotency_key=f"fund-{email}",
    )
    return account_id


def _charges(account_id: str, tag: str) -> list[usage.Charge]:
    bodies: list[dict[str, Any]] = [
        {"amount": "0.25", "usecase": "llm"},
        {"amount": "0.5", "usecase": "llm", "description": "é", "metadata": {"n": "1.50"}},
        {"amount": "100", "usecase": "llm"},  # refused: more than the wallet holds
    ]
    return [
        usage_use_cases._charge(
            UsageChargeRequest.model_validate({"account_id": account_id, **body}),
            Call(key=f"{tag}-{n}", fingerprint="f" * 64, request_id="req"),
            AT,
        )
        for n, body in enumerate(bodies)
    ]


def _write(services: Services, charges: list[usage.Charge]) -> list[int]:
    with services.database.transaction() as session:
        return [answer.status_code for answer in usage.write(session, charges, services.key_policy)]


def _store_keys_with_sqlalchemy(session: Session, rows: list[dict[str, Any]]) -> set[Any]:
    table = cast(Table, IdempotencyKey.__table__)
    statement = (
        sqlite_insert(table)
        .on_conflict_do_nothing(index_elements=["scope", "key"])
        .returning(table.c.scope, table.c.key)
    )
    return {(row.scope, row.key) for row in session.execute(statement, rows)}


def _rows(db: sqlite3.Connection, sql: str, account_id: str) -> list[tuple[Any, ...]]:
    return [
        tuple((type(value).__name__, value) for value in row)
        for row in db.execute(sql, (account_id,))
    ]


def test_the_sqlite_statements_write_what_the_sqlalchemy_statements_write(
    sqlite_services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = _funded_account(sqlite_services, "direct@example.com")
    through = _funded_account(sqlite_services, "through@example.com")
    assert _write(sqlite_services, _charges(direct, "direct")) == [201, 201, 402]
    # The SQLAlchemy statements: `write`'s own on PostgreSQL, and for the keys (whose
    # PostgreSQL statement takes arrays) SQLAlchemy's insert of the same rows.
    monkeypatch.setattr(usage._SqliteWrites, "of", classmethod(lambda cls, session: None))
    monkeypatch.setattr(usage, "_store_keys_postgresql", _store_keys_with_sqlalchemy)
    assert _write(sqlite_services, _charges(through, "through")) == [201, 201, 402]

    url = sqlite_services.database.engine.url.database
    assert url is not None
    db = sqlite3.connect(url)
    try:
        queries = [
            "SELECT kind, type, amount_micros, status, balance_after_micros, usecase,"
            " description, payment_id, reference, metadata, created_at"
            " FROM ledger_transactions WHERE account_id = ? AND kind = 'usage_charge'"
            " ORDER BY balance_after_micros DESC",
            "SELECT p.ledger_account, p.amount_micros FROM ledger_postings AS p"
            " JOIN ledger_transactions AS t ON t.id = p.transaction_id"
            " WHERE t.account_id = ? AND t.kind = 'usage_charge'"
            " ORDER BY t.balance_after_micros DESC, p.ledger_account",
            "SELECT balance_micros, subscription_micros, promotional_micros, purchased_micros,"
            " auto_funding_armed, updated_at FROM wallets WHERE account_id = ?",
        ]
        for sql in queries:
            written = _rows(db, sql, direct)
            assert written, sql
            assert written == _rows(db, sql, through), sql
        keys = {
            tag: db.execute(
                "SELECT status, response_status, typeof(response_body), created_at, locked_at,"
                " expires_at FROM idempotency_keys WHERE key LIKE ? ORDER BY key",
                (f"{tag}-%",),
            ).fetchall()
            for tag in ("direct", "through")
        }
    finally:
        db.close()
    assert [row[:3] for row in keys["direct"]] == [row[:3] for row in keys["through"]]
    assert [row[:3] for row in keys["direct"]] == [("completed", 201, "text")] * 2 + [
        ("completed", 402, "text")
    ]
    for row in keys["direct"] + keys["through"]:
        assert all(STORED_TIME.match(value) for value in row[3:]), row


def test_a_stored_key_found_by_the_sqlite_statements_writes_nothing(
    sqlite_services: Services,
) -> None:
    account_id = _funded_account(sqlite_services, "twice@example.com")
    first = _charges(account_id, "same")
    assert _write(sqlite_services, first[:1]) == [201]
    with pytest.raises(usage.KeysTaken) as taken:
        _write(sqlite_services, first)
    assert taken.value.taken == {("operator", "same-0")}
    with sqlite_services.database.read() as session:
        rows = usage._SqliteWrites.of(session)
        assert rows is not None
        assert rows.lock([account_id])[account_id].balance == 10_000_000 - 250_000


def test_keys_go_in_as_many_statements_as_sqlites_variable_limit_asks(
    sqlite_services: Services,
) -> None:
    account_id = _funded_account(sqlite_services, "limit@example.com")
    charges = [
        usage_use_cases._charge(
            UsageChargeRequest.model_validate(
                {"account_id": account_id, "amount": "0.01", "usecase": "llm"}
            ),
            Call(key=f"limit-{n}", fingerprint="f" * 64, request_id="req"),
            AT,
        )
        for n in range(7)
    ]
    with sqlite_services.database.transaction() as session:
        driver = session.connection().connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        driver.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 20)  # two keys a statement
        answers = usage.write(session, charges, sqlite_services.key_policy)
    assert [answer.status_code for answer in answers] == [201] * 7
    with sqlite_services.database.read() as session:
        raw = usage._SqliteWrites.of(session)
        assert raw is not None
        assert raw.lock([account_id])[account_id].balance == 10_000_000 - 70_000
        stored = raw.cursor.execute(
            "SELECT count(*) FROM idempotency_keys WHERE key LIKE 'limit-%'"
        ).fetchone()
    assert stored == (7,)
